"""The hostage audit (infra/audit.py, infra/audit_cli.py) on copies of the shipped spec.

Each test changes a copy of Pulumi.yaml and stacks/ in a temp dir, the way an operator could
get it wrong, and expects exactly the breaches that change causes, for the provider it names.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra import audit
from infra.audit_cli import app
from infra.spec import SpecError
from tests.witnesses import B2 as WITNESS

ROOT = Path(__file__).resolve().parent.parent
ECR_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/social-app:1.0"
ROUTE53 = {"class": "octodns_route53.Route53Provider", "vendor": "aws",
           "args": {"access_key_id": "env/AWS_ACCESS_KEY_ID", "secret_access_key": "env/AWS_SECRET_ACCESS_KEY"}}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the shipped Pulumi.yaml and stacks/, to be changed by the test."""
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    return tmp_path / "Pulumi.yaml"


def edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def site(project: Path, stack: str, **values) -> None:
    edit(project.parent / "stacks" / f"Pulumi.{stack}.yaml", lambda data: data["config"]["failover:site"].update(values))


def found(project: Path, drop: str | None = None, live=None) -> set[tuple[str, str]]:
    breaches = audit.audit(audit.load_estate(project), drop, live)
    for b in breaches:  # every breach names the dependency, where it lives, why and the fix
        assert all(str(v).strip() for v in b.as_dict().values()), b
    return {(b.check, b.provider) for b in breaches}


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_shipped_stacks_audit_clean():
    result = run_cli("--project", str(ROOT / "Pulumi.yaml"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []
    human = run_cli("--project", str(ROOT / "Pulumi.yaml"))
    assert human.exit_code == 0 and "no breach" in human.output


def test_every_holder_is_audited():
    estate = audit.load_estate(ROOT / "Pulumi.yaml")
    assert set(audit.providers(estate)) >= {"aws", "gcp", "azure", "cloudflare", "ns1", "gandi", "github", "quay", "pulumi"}


def test_dns_only_at_the_primarys_cloud(project):
    edit(project, lambda d: d["config"]["dns"]["value"].update(providers={"route53": ROUTE53}))
    assert found(project) == {("dns", "aws")}


def test_dns_class_counts_even_if_vendor_says_otherwise(project):
    mislabelled = {**ROUTE53, "vendor": "acme-dns-team"}
    edit(project, lambda d: d["config"]["dns"]["value"].update(providers={"r53": mislabelled}))
    assert ("dns", "aws") in found(project)


def test_awskms_secrets_provider(project):
    for stack in ("aws", "gcp", "azure"):
        edit(project.parent / "stacks" / f"Pulumi.{stack}.yaml",
             lambda d: d.update(secretsprovider="awskms://alias/failover?region=us-east-1"))
    assert found(project) == {("secrets", "aws")}
    [breach] = audit.audit(audit.load_estate(project), "aws")
    assert "aws, gcp, azure" in breach.dependency and "change-secrets-provider" in breach.fix


def test_only_repository_in_the_primarys_cloud(project):
    # The other sites keep their cloud but store on S3: backups, WAL, media and the inventory
    # copy all live in a site's object store, so all four lose their copy outside AWS, and no
    # store outside AWS is left for a failover's epoch claim.
    site(project, "gcp", storage="s3")
    site(project, "azure", storage="s3")
    assert found(project) == {("repository", "aws"), ("wal", "aws"), ("media", "aws"), ("inventory", "aws"),
                              ("quorum", "aws")}
    result = run_cli("--project", str(project), "--drop", "aws", "--json")
    assert result.exit_code == 1
    assert {b["check"] for b in json.loads(result.output)} == {"repository", "wal", "media", "inventory", "quorum"}


def test_only_one_stack_left(project):
    for stack in ("gcp", "azure"):
        (project.parent / "stacks" / f"Pulumi.{stack}.yaml").unlink()
    assert found(project) == {(c, "aws") for c in ("repository", "wal", "media", "inventory", "standby", "quorum")}


def test_image_only_at_the_primarys_cloud(project):
    edit(project, lambda d: d["config"]["app"]["value"].update(image=ECR_IMAGE, image_mirrors=[]))
    assert found(project) == {("image", "aws")}


def test_no_standby_on_another_cloud(project):
    # Both standbys moved onto AWS compute (storage stays elsewhere, so only takeover is lost).
    site(project, "gcp", cloud="aws", region="us-east-2")
    site(project, "azure", cloud="aws", region="us-west-2")
    assert found(project) == {("standby", "aws")}
    human = run_cli("--project", str(project))
    assert human.exit_code == 1 and "breach" in human.output and "fix:" in human.output


def test_state_backend_in_a_site_cloud(project):
    edit(project, lambda d: d["backend"].update(url="s3://failover-state"))
    assert found(project) == {("state", "aws")}


def test_registrar_that_also_hosts_dns(project):
    edit(project, lambda d: d["config"]["dns"]["value"].update(registrar="cloudflare"))
    assert found(project) == {("registrar", "cloudflare")}


def test_vendors_need_a_fallback_outside(project):
    vendors = {"acme": {"provider": "letsencrypt", "fallback": "zerossl"},
               "email": {"provider": "sendgrid"},
               "sms": {"provider": "twilio", "fallback": ["twilio"]}}
    edit(project, lambda d: d["config"].update(vendors={"value": vendors}))
    assert found(project) == {("vendor", "sendgrid"), ("vendor", "twilio")}


def test_invalid_vendors_exit_2_naming_file_and_key(project):
    edit(project, lambda d: d["config"].update(vendors={"value": {"sms": {"fallback": 3, "colour": "red"}}}))
    with pytest.raises(SpecError) as error:
        audit.load_estate(project)
    assert "config.vendors.sms.provider" in str(error.value)
    assert run_cli("--project", str(project)).exit_code == 2


def witnesses(project: Path, **named) -> None:
    edit(project, lambda d: d["config"].update(witnesses={"value": named}))


def test_a_provider_holding_a_majority_of_the_stores_blocks_every_failover(project):
    # gcp's site stores at S3: aws holds 2 of the 3 stores, so a failover away from aws finds 1,
    # short of the claim's majority of 2. The repository, WAL and media still have a copy at azure.
    site(project, "gcp", storage="s3")
    assert found(project) == {("quorum", "aws")}
    [breach] = audit.audit(audit.load_estate(project), "aws")
    assert "2 of the 3 stores are at aws" in breach.why and "config.witnesses" in breach.fix
    assert "site gcp (aws)" in breach.lives_at


def test_witness_stores_count_in_the_quorum_and_are_audited(project):
    site(project, "gcp", storage="s3")
    witnesses(project, b2=WITNESS, r2={**WITNESS, "provider": "cloudflare", "endpoint": "example.r2.cloudflarestorage.com"})
    assert found(project) == set()  # without aws: 3 of 5 stores (azure's and both witnesses)
    estate = audit.load_estate(project)
    assert {"backblaze", "cloudflare"} <= set(audit.providers(estate))
    witnesses(project, b2=WITNESS, r2={**WITNESS, "provider": "aws"})  # a witness at the same provider helps nothing
    assert found(project) == {("quorum", "aws")}
    # The registrar check knows what a witness's provider holds.
    edit(project, lambda d: d["config"]["dns"]["value"].update(registrar="backblaze"))
    witnesses(project, b2=WITNESS)
    assert ("registrar", "backblaze") in found(project)


def keys(project: Path, copies) -> None:
    edit(project, lambda d: d["config"].update(encryption={"value": {"key_copies": copies}}))


def test_encryption_keys_must_be_held_in_two_places_outside_every_site_provider(project):
    sites = {("keys", "aws"), ("keys", "gcp"), ("keys", "azure")}
    keys(project, [{"place": "password manager", "provider": "1password"}])
    assert found(project) == sites  # one copy apart is not enough
    keys(project, [{"place": "password manager", "provider": "1password"},
                   {"place": "Secrets Manager", "provider": "aws"}])
    assert found(project) == sites  # a copy at a site's provider does not count (it could read the others' data)
    keys(project, [{"place": "password manager", "provider": "1password"}, {"place": "safe", "provider": "office"}])
    assert found(project) == set()
    keys(project, [])
    assert found(project, "gcp") == {("keys", "gcp")}
    breach = next(b for b in audit.audit(audit.load_estate(project), "gcp") if b.check == "keys")
    assert "config.encryption.key_copies" in breach.fix and "FAILOVER_BACKUP_KEY" in breach.fix


def test_invalid_key_copies_name_file_and_entry(project):
    keys(project, [{"place": "safe"}])
    with pytest.raises(SpecError) as error:
        audit.load_estate(project)
    assert "config.encryption.key_copies[0]" in str(error.value) and str(project) in str(error.value)


def status(ages_hours: dict[str, float | None], now: datetime) -> dict:
    def repos(age):
        stop = None if age is None else (now - timedelta(hours=age)).isoformat()
        return [{"name": "repo", "last_backup": stop, "last_archived_wal": "000000010000000000000003", "error": None}]
    return {"active": "aws", "epoch": 1, "sites": [
        {"name": n, "reachable": True, "repositories": repos(a), "media": {"in_sync": True}}
        for n, a in ages_hours.items()]}


def test_live_backup_age_outside_the_dropped_provider():
    now = datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
    estate = ROOT / "Pulumi.yaml"
    fresh = audit.live_status(status({"aws": 1, "gcp": 2, "azure": None}, now), now)
    assert found(estate, live=fresh) == set()
    stale = audit.live_status(status({"aws": 1, "gcp": 30, "azure": None}, now), now)
    assert found(estate, live=stale) == {("backups", "aws")}


def test_live_unreachable_standbys():
    now = datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
    report = status({"aws": 1, "gcp": 1, "azure": 1}, now)
    for entry in report["sites"][1:]:
        entry["reachable"] = False
    assert found(ROOT / "Pulumi.yaml", "aws", audit.live_status(report, now)) == {("standby", "aws")}


@pytest.mark.parametrize("image,home", [
    ("ghcr.io/example/app:1", "github"), ("quay.io/example/app:1", "quay"), (ECR_IMAGE, "aws"),
    ("public.ecr.aws/example/app:1", "aws"), ("gcr.io/p/app:1", "gcp"), ("europe-docker.pkg.dev/p/r/app:1", "gcp"),
    ("example.azurecr.io/app:1", "azure"), ("nginx:1.27", "docker"), ("library/nginx", "docker"),
])
def test_registry_homes(image, home):
    assert audit.registry_home(image) == home


@pytest.mark.parametrize("url,home", [
    ("s3://b", "aws"), ("gs://b", "gcp"), ("azblob://c", "azure"), ("https://api.pulumi.com", "pulumi"), ("", "pulumi"),
])
def test_backend_homes(url, home):
    assert audit.backend_home(url) == home


def test_secrets_provider_homes():
    assert audit.kms_home("passphrase", "") is None
    assert audit.kms_home("gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k", "") == "gcp"
    assert audit.kms_home("azurekeyvault://v.vault.azure.net/keys/k", "") == "azure"
    assert audit.kms_home("", "https://api.pulumi.com") == "pulumi"  # the service-managed key
    assert audit.kms_home("", "file:///state") is None
