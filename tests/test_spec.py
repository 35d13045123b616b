"""The spec: the shipped Pulumi.yaml and stacks load; malformed ones give errors naming file and key."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from infra.spec import WITNESS_TYPES, SpecError, load_spec, load_witnesses
from tests import witnesses

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_spec_loads_with_sites_in_role_order():
    spec = load_spec(ROOT / "Pulumi.yaml")
    assert [(s.name, s.role) for s in spec.sites] == [("aws", "primary"), ("gcp", "warm"), ("azure", "pilot-light")]
    assert spec.database.port == 15432 and spec.database.replication == "quorum"
    assert spec.dns.zone.endswith(".") and "" in spec.dns.names
    assert all(p.args and all(v.startswith("env/") for v in p.args.values()) for p in spec.dns.providers)


@pytest.fixture
def project(tmp_path):
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    return tmp_path


def edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def site(data):
    return data["config"]["failover:site"]


def app(data):
    return data["config"]["app"]["value"]


def dns(data):
    return data["config"]["dns"]["value"]


# name -> (file to change, change, fragments every error message must contain)
MALFORMED = {
    "yaml-syntax": ("stacks/Pulumi.gcp.yaml", "text:config: [unclosed", ["Pulumi.gcp.yaml", "line 1", "not valid YAML"]),
    "not-a-mapping": ("stacks/Pulumi.gcp.yaml", "text:- just\n- a list\n", ["Pulumi.gcp.yaml", "mapping"]),
    "site-missing": ("stacks/Pulumi.gcp.yaml", lambda d: d["config"].pop("failover:site"),
                     ["Pulumi.gcp.yaml", "config.failover:site", "required"]),
    "unknown-role": ("stacks/Pulumi.gcp.yaml", lambda d: site(d).update(role="standby"),
                     ["Pulumi.gcp.yaml", "failover:site.role", "'standby' is not one of: primary, warm, pilot-light"]),
    "unknown-cloud": ("stacks/Pulumi.azure.yaml", lambda d: site(d).update(cloud="oracle"),
                      ["Pulumi.azure.yaml", "failover:site.cloud", "'oracle'"]),
    "typo-key": ("stacks/Pulumi.aws.yaml", lambda d: site(d).update(regoin="x"),
                 ["Pulumi.aws.yaml", "failover:site.regoin", "unknown key", "valid keys"]),
    "region-missing": ("stacks/Pulumi.aws.yaml", lambda d: site(d).pop("region"),
                       ["Pulumi.aws.yaml", "failover:site.region", "required"]),
    "bad-cidr": ("stacks/Pulumi.aws.yaml", lambda d: site(d).update(admin_cidrs=["10.0.0.0/33"]),
                 ["Pulumi.aws.yaml", "admin_cidrs", "'10.0.0.0/33' is not a CIDR"]),
    "two-primaries": ("stacks/Pulumi.gcp.yaml", lambda d: site(d).update(role="primary"),
                      ["stacks", "exactly one site must be primary, found 2 (aws, gcp)"]),
    "no-primary": ("stacks/Pulumi.aws.yaml", lambda d: site(d).update(role="warm"),
                   ["stacks", "exactly one site must be primary, found 0"]),
    "port-not-int": ("Pulumi.yaml", lambda d: app(d).update(port="http"),
                     ["Pulumi.yaml", "config.app.port", "must be int, got 'http'"]),
    "ttl-zero": ("Pulumi.yaml", lambda d: dns(d).update(ttl=0),
                 ["Pulumi.yaml", "config.dns.ttl", "between 1 and 86400"]),
    "zone-without-dot": ("Pulumi.yaml", lambda d: dns(d).update(zone="social.example"),
                         ["Pulumi.yaml", "config.dns.zone", "must end with a dot"]),
    "secret-as-value": ("Pulumi.yaml", lambda d: dns(d)["providers"]["cloudflare"]["args"].update(token="abc123"),
                        ["Pulumi.yaml", "config.dns.providers.cloudflare.args.token", "env/NAME"]),
    "postgres-14": ("Pulumi.yaml", lambda d: d["config"]["database"]["value"].update(version=14),
                    ["Pulumi.yaml", "config.database.version", "only PostgreSQL 15"]),
    "unknown-replication": ("Pulumi.yaml", lambda d: d["config"]["database"]["value"].update(replication="semi"),
                            ["Pulumi.yaml", "config.database.replication", "'semi' is not one of: quorum, sync, async"]),
    "section-missing": ("Pulumi.yaml", lambda d: d["config"].pop("media"), ["Pulumi.yaml", "config.media", "required"]),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_spec_names_file_and_key(project, name):
    file, change, fragments = MALFORMED[name]
    if isinstance(change, str):
        (project / file).write_text(change[len("text:"):])
    else:
        edit(project / file, change)
    with pytest.raises(SpecError) as raised:
        load_spec(project / "Pulumi.yaml")
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_all_problems_are_reported_at_once(project):
    edit(project / "stacks/Pulumi.aws.yaml", lambda d: site(d).update(role="boss", admin_cidrs=["nope"]))
    edit(project / "Pulumi.yaml", lambda d: dns(d).update(ttl=-5))
    with pytest.raises(SpecError) as raised:
        load_spec(project / "Pulumi.yaml")
    assert len(raised.value.problems) >= 3
    assert any("Pulumi.aws.yaml" in p for p in raised.value.problems)
    assert any(p.startswith(str(project / "Pulumi.yaml")) for p in raised.value.problems)


def test_no_primary_is_accepted_only_for_the_sites_of_a_run_changing_roles(project):
    """The state between the capacity step's two writes (infra/clouds/automation.py): the old
    primary's stack demoted, the target's not yet promoted."""
    edit(project / "stacks/Pulumi.aws.yaml", lambda d: site(d).update(role="pilot-light"))
    with pytest.raises(SpecError, match=r"found 0 \(none\): set failover:site.role: primary in exactly one stack "
                                        r"file .*if a `failover run` was interrupted, rerun it instead"):
        load_spec(project / "Pulumi.yaml")
    with pytest.raises(SpecError, match="found 0"):
        load_spec(project / "Pulumi.yaml", roles_in_flux=("oracle",))  # not a site of this spec
    spec = load_spec(project / "Pulumi.yaml", roles_in_flux=("aws", "azure"))
    assert [s.role for s in spec.sites] == ["warm", "pilot-light", "pilot-light"]
    with pytest.raises(SpecError, match="finish it with `failover run --to <its target> --yes`"):
        spec.primary


def test_two_primaries_are_refused_even_while_roles_change(project):
    edit(project / "stacks/Pulumi.azure.yaml", lambda d: site(d).update(role="primary"))
    with pytest.raises(SpecError, match=r"found 2 \(aws, azure\)"):
        load_spec(project / "Pulumi.yaml", roles_in_flux=("aws", "azure"))


@pytest.mark.parametrize("mode", ["quorum", "sync", "async"])
def test_each_replication_mode_loads_and_quorum_is_the_default(project, mode):
    edit(project / "Pulumi.yaml", lambda d: d["config"]["database"]["value"].update(replication=mode))
    database = load_spec(project / "Pulumi.yaml").database
    assert database.replication == mode and database.standbys_reply == (mode != "async")
    edit(project / "Pulumi.yaml", lambda d: d["config"]["database"]["value"].pop("replication"))
    assert load_spec(project / "Pulumi.yaml").database.replication == "quorum"


# ---- witness stores (config.witnesses) --------------------------------------------------------

WITNESSES = {
    **witnesses.WITNESSES,
    "minio": {"provider": "office", "storage": "s3", "bucket": "witness", "region": "us-east-1",
              "endpoint": "minio.example.net:9000", "ca_file": "/etc/failover/minio-ca.crt",
              "credentials": {"s3-key": "env/M_KEY", "s3-key-secret": "env/M_SECRET", "s3-token": "env/M_TOKEN"}},
}


def with_witnesses(project: Path, witnesses) -> None:
    edit(project / "Pulumi.yaml", lambda d: d["config"].update(witnesses={"value": witnesses}))


def test_witnesses_load_with_their_storage_and_references(project):
    with_witnesses(project, WITNESSES)
    spec = load_spec(project / "Pulumi.yaml")
    assert [w.name for w in spec.witnesses] == ["b2", "blob", "gstore", "minio"]  # the file's order (edit sorts)
    b2, blob, gstore, minio = spec.witnesses
    assert (b2.storage, b2.bucket, b2.region, b2.endpoint, b2.uri_style) == (
        "s3", "social-witness", "us-west-004", "s3.us-west-004.backblazeb2.com", "path")
    assert b2.credentials == {"s3-key": "env/T_WITNESS_B2_KEY", "s3-key-secret": "env/T_WITNESS_B2_SECRET"}
    assert (gstore.storage, gstore.bucket, gstore.region) == ("gcs", "social-witness-g", "")
    assert (blob.account, blob.bucket) == ("socialwitness", "witness")  # the container is the witness's bucket
    assert minio.ca_file == "/etc/failover/minio-ca.crt" and "s3-token" in minio.credentials
    assert load_witnesses(project / "Pulumi.yaml") == spec.witnesses
    assert load_spec(ROOT / "Pulumi.yaml").witnesses == ()  # the shipped spec declares none


# Each bad witness -> the key and the message fragments its problem must name.
BAD_WITNESSES = {
    "aws": ({**WITNESSES["b2"]}, ["config.witnesses.aws", "clashes with site aws", "Pulumi.aws.yaml"]),
    "Bad_Name": ({**WITNESSES["b2"]}, ["config.witnesses.Bad_Name", "lower-case"]),
    "no-storage": ({k: v for k, v in WITNESSES["b2"].items() if k != "storage"},
                   ["config.witnesses.no-storage.storage", "is required: one of s3, gcs, azure"]),
    "ftp": ({**WITNESSES["b2"], "storage": "ftp"}, ["config.witnesses.ftp.storage", "'ftp' is not one of: s3, gcs, azure"]),
    "no-provider": ({k: v for k, v in WITNESSES["b2"].items() if k != "provider"},
                    ["config.witnesses.no-provider.provider", "is required"]),
    "no-region": ({k: v for k, v in WITNESSES["b2"].items() if k != "region"},
                  ["config.witnesses.no-region.region", "is required"]),
    "no-account": ({k: v for k, v in WITNESSES["blob"].items() if k != "account"},
                   ["config.witnesses.no-account.account", "is required"]),
    "typo": ({**WITNESSES["gstore"], "regoin": "x"}, ["config.witnesses.typo.regoin", "unknown key", "valid keys"]),
    "gcs-region": ({**WITNESSES["gstore"], "region": "eu"}, ["config.witnesses.gcs-region.region", "unknown key"]),
    "scheme": ({**WITNESSES["b2"], "endpoint": "https://s3.example.com"},
               ["config.witnesses.scheme.endpoint", "without a scheme"]),
    "bucket": ({**WITNESSES["b2"], "bucket": "Bad_Bucket"}, ["config.witnesses.bucket.bucket", "'Bad_Bucket'"]),
    "container": ({**WITNESSES["blob"], "container": "a--b"}, ["config.witnesses.container.container", "'a--b'"]),
    "style": ({**WITNESSES["b2"], "uri_style": "virtual"}, ["config.witnesses.style.uri_style", "host, path"]),
    "ca": ({**WITNESSES["b2"], "ca_file": "ca.crt"}, ["config.witnesses.ca.ca_file", "absolute path"]),
    "plain-secret": ({**WITNESSES["b2"], "credentials": {"s3-key": "AKIAEXAMPLE", "s3-key-secret": "env/S"}},
                     ["config.witnesses.plain-secret.credentials.s3-key", "references like env/NAME, never values"]),
    "half-pair": ({**WITNESSES["b2"], "credentials": {"s3-key": "env/K"}},
                  ["config.witnesses.half-pair.credentials", "needs s3-key and s3-key-secret"]),
    "no-credentials": ({k: v for k, v in WITNESSES["b2"].items() if k != "credentials"},
                       ["config.witnesses.no-credentials.credentials", "is required"]),
    "wrong-credential": ({**WITNESSES["blob"], "credentials": {"media-sas": "env/S", "azure-key": "env/K"}},
                         ["config.witnesses.wrong-credential.credentials.azure-key", "unknown credential",
                          "media-sas, media-sas-url"]),
    "sas-elsewhere": ({**WITNESSES["blob"], "endpoint": "blob.example.net"},
                      ["config.witnesses.sas-elsewhere.credentials.media-sas", "media-sas-url"]),
    "not-a-mapping": ("s3://bucket", ["config.witnesses.not-a-mapping", "must be a mapping"]),
}


@pytest.mark.parametrize("name", sorted(BAD_WITNESSES))
def test_a_bad_witness_names_file_and_key(project, name):
    entry, fragments = BAD_WITNESSES[name]
    with_witnesses(project, {"b2": WITNESSES["b2"], name: entry})
    with pytest.raises(SpecError) as error:
        load_spec(project / "Pulumi.yaml")
    problems = error.value.problems
    assert any(all(f in p for f in fragments) for p in problems), problems
    assert all(p.startswith(str(project / "Pulumi.yaml")) for p in problems)
    assert all("config.witnesses.b2" not in p for p in problems)  # the good witness beside it passes
    assert "AKIAEXAMPLE" not in str(error.value)  # a credential written as a value is named, never shown
    with pytest.raises(SpecError):
        load_witnesses(project / "Pulumi.yaml")


def test_every_witness_problem_is_reported_at_once(project):
    with_witnesses(project, {name: entry for name, (entry, _) in BAD_WITNESSES.items()})
    with pytest.raises(SpecError) as error:
        load_spec(project / "Pulumi.yaml")
    for name, (_, fragments) in BAD_WITNESSES.items():
        assert any(all(f in p for f in fragments) for p in error.value.problems), (name, error.value.problems)
    with_witnesses(project, ["b2"])
    with pytest.raises(SpecError, match="config.witnesses: must be a mapping"):
        load_spec(project / "Pulumi.yaml")


def test_witness_credentials_are_names_the_storage_types_use():
    """The spec's credential names are the writer-credential names the storage classes map."""
    from infra.data.objectstores import GCS
    from infra.data.storage import storage_for

    for storage, kind in WITNESS_TYPES.items():
        store = storage_for(storage)
        used = {*store.repo_credential_names, *store.media_credential_names, GCS.SERVICE_KEY, "media-sas"}
        names = {n for alternative in kind.credentials for n in alternative} | set(kind.optional_credentials)
        assert names <= used, (storage, names - used)
