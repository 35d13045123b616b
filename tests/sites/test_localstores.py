"""The local cloud's stores as data (infra/sites/localstores.py): what each type puts in the Inventory."""
from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509

from infra import secrets
from infra.data.storage import storage_for
from infra.sites import emulators
from infra.sites.localstores import EmulatedStores, PosixStores, stores_for
from infra.sites.localvms import plan, storage_kinds
from infra.spec import load_spec
from tests.conftest import ROOT

SPEC = load_spec(ROOT / "Pulumi.yaml")
SITES = plan(SPEC, 3, "127.0.111")


def test_emulated_stores_are_each_sites_cloud_on_its_own_address_with_references_only(tmp_path):
    stores = EmulatedStores(tmp_path, storage_kinds(SPEC, SITES))
    for site in SITES:
        repository, media, credentials = stores.outputs(site.site, site.address)
        assert repository.type == next(s.storage for s in SPEC.sites if s.name == site.site)
        assert storage_for(repository.type).endpoint(repository) == (site.address, emulators.BASE_PORT)
        assert repository.options["storage-ca-file"] == str(tmp_path / "emulators" / "tls" / "ca.crt")
        assert media.path == f"failover-{site.site}/media"
        assert credentials and all(secrets.is_ref(value) for value in credentials.values())
        ports = stores.endpoints(site.site, site.address)
        assert ports == ([19000, 19001] if repository.type == "s3" else [19000])


def test_posix_stores_are_directories_and_an_unknown_type_is_named():
    repository, media, credentials = PosixStores(ROOT / "vms", {}).outputs("aws", "127.0.111.1")
    assert repository.type == "posix" and repository.options["path"].endswith("vms/stores/aws/pgbackrest")
    assert media.path.endswith("vms/stores/aws/media") and credentials == {}
    with pytest.raises(ValueError, match="--storage 'nfs' must be one of: posix, emulated"):
        stores_for("nfs", ROOT, {})


def test_an_emulators_certificate_names_its_address_as_pgbackrest_and_rclone_match_it(tmp_path):
    # pgBackRest compares the host with DNS names only once a certificate has any subjectAltName.
    tls = emulators.ensure_tls(tmp_path, "127.0.111.2")
    names = x509.load_pem_x509_certificate(tls.cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["127.0.111.2"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.111.2")]
