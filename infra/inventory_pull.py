"""The Inventory from Pulumi: each stack's `pulumi stack output --json --show-secrets`, parsed.

Secrets never enter the inventory: writer credentials are written to a 0600 `secrets.env` and
the inventory holds `env/NAME` references (resolved by infra.secrets). The inventory is then
copied to every site's media bucket with rclone, so a failover needs neither the dropped cloud
nor the Pulumi state backend. Parsing and planning are pure; the CLI and rclone are thin calls.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from infra.sites.contract import EXPORTED_KEYS, Inventory, SiteOutputs
from infra.spec import ROLES

INVENTORY_KEY = "failover/inventory.json"  # where, inside each site's media bucket
RCLONE_PREFIX = {"google cloud storage": "gcs"}  # rclone.conf type -> its on-the-fly remote name


class PullError(ValueError):
    """A stack's outputs cannot become part of the inventory; the message names the stack."""


def env_name(site: str, key: str) -> str:
    """The environment variable holding one site's writer credential, e.g. FAILOVER_AWS_S3_KEY."""
    return "FAILOVER_" + re.sub(r"[^A-Z0-9]+", "_", f"{site}_{key}".upper()).strip("_")


def parse_stack_outputs(stack: str, text: str) -> tuple[SiteOutputs, dict[str, str]]:
    """One stack's outputs -> (SiteOutputs with env/NAME credentials, {NAME: secret value})."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PullError(f"stack {stack}: `pulumi stack output --json` is not JSON ({error})") from None
    if not isinstance(data, dict):
        raise PullError(f"stack {stack}: outputs must be a JSON object, got {type(data).__name__}")
    missing = [key for key in EXPORTED_KEYS if key not in data]
    if missing:
        raise PullError(f"stack {stack}: outputs lack {', '.join(missing)}; run `pulumi up -s {stack}` first")
    credentials = data["writer_credentials"]
    if not isinstance(credentials, dict):
        raise PullError(f"stack {stack}: writer_credentials is {credentials!r}; pass --show-secrets")
    site = str(data["site"])
    secrets = {env_name(site, key): str(value) for key, value in credentials.items()}
    refs = {key: f"env/{env_name(site, key)}" for key in credentials}
    values = {key: data[key] for key in EXPORTED_KEYS} | {"writer_credentials": refs}
    try:
        return SiteOutputs.from_dict(values, where=f"stack {stack}"), secrets
    except (TypeError, ValueError) as error:
        raise PullError(f"stack {stack}: outputs do not match SiteOutputs ({error})") from None


def build_inventory(outputs: dict[str, str]) -> tuple[Inventory, dict[str, str]]:
    """{stack: output JSON} -> (Inventory in spec order, primary active; all secrets)."""
    sites, secrets = [], {}
    for stack, text in outputs.items():
        site, site_secrets = parse_stack_outputs(stack, text)
        sites.append(site)
        secrets.update(site_secrets)
    unknown = [s.site for s in sites if s.role not in ROLES]
    primaries = [s.site for s in sites if s.role == "primary"]
    if unknown or len(primaries) != 1:
        raise PullError(f"stacks {', '.join(outputs)}: need exactly one primary and known roles; "
                        f"primaries: {primaries or 'none'}, unknown roles at: {unknown or 'none'}")
    # The same order as load_spec, so pgBackRest repo numbers agree with the spec's.
    sites.sort(key=lambda s: (ROLES.index(s.role), s.site))
    return Inventory(sites=sites, active=primaries[0]), secrets


def write_secrets(path: Path, secrets: dict[str, str]) -> None:
    """`NAME='value'` lines, readable by the owner only, created 0600 (never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{name}={shlex.quote(value)}\n" for name, value in sorted(secrets.items()))


@dataclass(frozen=True)
class CopyTarget:
    """Where one site keeps its copy of the inventory, as an rclone destination plus its env."""

    site: str
    destination: str
    env: dict[str, str] = field(repr=False, default_factory=dict)


def copy_target(site: SiteOutputs, secrets: dict[str, str]) -> CopyTarget:
    """The site's media bucket as an on-the-fly rclone remote, authenticated by its writer credential."""
    remote = site.media_remote
    options = ",".join(f"{k}={_quote(v)}" for k, v in sorted(remote.options.items()))
    backend = RCLONE_PREFIX.get(remote.type, remote.type)
    destination = f":{backend}{',' + options if options else ''}:{remote.path}/{INVENTORY_KEY}"
    creds = {key: secrets.get(ref.removeprefix("env/"), "") for key, ref in site.writer_credentials.items()}
    return CopyTarget(site.site, destination, rclone_env(remote.type, remote.options, remote.path, creds))


def _quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in ",:=\"'") else value


def rclone_env(backend: str, options: dict[str, str], path: str, creds: dict[str, str]) -> dict[str, str]:
    """rclone's environment for a writer credential (pgBackRest-named keys, see infra/clouds)."""
    if backend == "s3" and "s3-key" in creds:
        return {"RCLONE_S3_ACCESS_KEY_ID": creds["s3-key"], "RCLONE_S3_SECRET_ACCESS_KEY": creds["s3-key-secret"]}
    if backend == "google cloud storage" and "gcs-key-json-base64" in creds:
        key = base64.b64decode(creds["gcs-key-json-base64"]).decode()
        return {"RCLONE_GCS_SERVICE_ACCOUNT_CREDENTIALS": key}
    if backend == "azureblob" and "media-sas" in creds:
        url = f"https://{options.get('account')}.blob.core.windows.net/{path}?{creds['media-sas']}"
        return {"RCLONE_AZUREBLOB_SAS_URL": url}
    return {}


def stack_output(stack: str, cwd: Path) -> str:
    """`pulumi stack output --json --show-secrets` for one stack (needs the Pulumi CLI and backend login)."""
    if not shutil.which("pulumi"):
        raise FileNotFoundError("the Pulumi CLI is not installed; see docs/pulumi.md (or pass recorded "
                                "outputs with --from DIR holding <stack>.json files)")
    result = subprocess.run(["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack],
                            cwd=cwd, capture_output=True, text=True, timeout=300)
    if result.returncode:
        raise PullError(f"stack {stack}: `pulumi stack output` failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def copy(target: CopyTarget, source: Path) -> str:
    """Copies the inventory to one site with rclone; returns 'copied' or the error, never raises."""
    if not shutil.which("rclone"):
        return "skipped: rclone is not installed"
    result = subprocess.run(["rclone", "copyto", str(source), target.destination],
                            env={**os.environ, **target.env}, capture_output=True, text=True, timeout=300)
    return "copied" if result.returncode == 0 else f"failed: {result.stderr.strip()[-300:]}"
