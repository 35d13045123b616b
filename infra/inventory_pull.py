"""The Inventory from Pulumi: each stack's `pulumi stack output --json --show-secrets`, parsed.

Secrets never enter the inventory: writer credentials are written to a 0600 `secrets.env` and
the inventory holds `env/NAME` references (resolved by infra.secrets). Each stack's public SSH
host key (`ssh_host_public_key`, the key its VMs boot with) goes into a `known_hosts` beside
the inventory, one line per ssh_host, which the engine trusts (infra/sites/site.py). The inventory is then
put into every site's store, where the engine reads it (`.failover/inventory.json` beside the
media), so a failover needs neither the dropped cloud nor the Pulumi state backend. Parsing
and planning are pure; the CLI and the stores are thin calls.

The spec's witness stores (config.witnesses: buckets at further providers, which no stack
creates) join the Inventory as `witnesses`; their credentials stay the spec's env/NAME
references, and their values, read from the environment, go into the same secrets.env.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from collections.abc import Mapping

from infra.clouds import hostkey, stores
from infra.data.storage import MissingKey, Store, StoreError, put_all
from infra.secrets import REF
from infra.sites import contract
from infra.sites.contract import EXPORTED_KEYS, Inventory, MediaRemote, Repository, SiteOutputs
from infra.sites.fleet import INVENTORY_COPY
from infra.spec import ROLES, Witness


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


def witness_outputs(witness: Witness) -> SiteOutputs:
    """A witness store of the spec (config.witnesses) as the Inventory lists it: its storage
    type's repository and media remote (infra/clouds/stores.py, as a site's store of that type),
    and its credentials as the spec's env/NAME references."""
    repository, remote = stores.witness(witness)
    return contract.witness(witness.name, witness.provider, witness.region, Repository(**repository),
                            MediaRemote(**remote), witness.credentials)


def witness_secrets(witnesses: tuple[Witness, ...], environ: Mapping[str, str],
                    project_file: str = "Pulumi.yaml") -> dict[str, str]:
    """NAME -> value behind every witness credential, from `environ`. PullError names each one
    that is not set (witness, key and variable, never a value), all at once."""
    found, missing = {}, []
    for witness in witnesses:
        for key, ref in witness.credentials.items():
            name = match.group(1) if (match := REF.match(ref)) else ""
            if name and environ.get(name):
                found[name] = environ[name]
            else:
                missing.append(f"witness {witness.name}: {project_file}: config.witnesses.{witness.name}.credentials."
                               f"{key} is {ref}, but {name or ref} is not set")
    if missing:
        raise PullError("; ".join(missing) + ": export each before `failover inventory pull` (its value goes into "
                        "secrets.env, 0600, for the lease on the primary and the claims)")
    return found


def build_inventory(outputs: dict[str, str], witnesses: tuple[SiteOutputs, ...] = ()) -> tuple[Inventory, dict[str, str]]:
    """{stack: output JSON} -> (Inventory in spec order, primary active, with `witnesses`; the
    sites' secrets)."""
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
    return Inventory(sites=sites, active=primaries[0], witnesses=list(witnesses)), secrets


def known_hosts(outputs: dict[str, str]) -> tuple[str, list[str]]:
    """{stack: output JSON} -> (known_hosts text: each ssh_host with its site's host key; the
    stacks that export no host key yet, whose hosts the engine will refuse until they do)."""
    lines, lacking = [], []
    for stack, text in outputs.items():
        data = json.loads(text)
        key = data.get(hostkey.OUTPUT)
        if not isinstance(key, str) or not re.match(r"^ssh-ed25519 \S+", key):
            lacking.append(stack)
            continue
        kind, blob = key.split()[:2]
        lines += [f"{host} {kind} {blob}\n" for host in data["ssh_hosts"]]
    return "".join(lines), lacking


def keep_known(pulled: Inventory, known: list[Inventory]) -> Inventory:
    """The pulled sites under what the newest known Inventory (highest epoch, then latest
    update) already says: its active site and epoch, and its order of sites, which numbers
    their pgBackRest repositories (`repoN` = the N-th site on every host) for their lifetime.

    So a pull after a failover keeps the new primary active whatever role the stacks still
    declare, never lowers the epoch, and a role change renumbers nothing. A new site is added
    at the end; a known site that is missing from the pull is refused, since every site after
    it would change number."""
    if not known:
        return pulled
    newest = max(known, key=lambda inv: (inv.epoch, inv.updated))
    missing = [name for name in newest.names if name not in pulled.names]
    if missing:
        raise PullError(f"the Inventory already has site(s) {', '.join(missing)}, which this pull lacks: pull "
                        f"every stack (--stacks {','.join(newest.names + [n for n in pulled.names if n not in newest.names])})"
                        "; removing a site would renumber the repositories of the sites after it")
    order = newest.names + [name for name in pulled.names if name not in newest.names]
    # The witnesses are the spec's, as pulled: changing them changes every majority (docs/lease.md).
    return Inventory(sites=[pulled.site(name) for name in order], active=newest.active,
                     epoch=max(inv.epoch for inv in known), witnesses=pulled.witnesses)


def read_copies(inventory: Inventory) -> tuple[list[Inventory], dict[str, str]]:
    """The Inventory copies in the sites' stores (the credentials must be in the environment);
    returns (copies, site -> why its copy was not read)."""
    copies, unread = [], {}
    for site in inventory.sites:
        try:
            copies.append(Inventory.from_json(Store(site).get(INVENTORY_COPY).decode(), where=str(Store(site))))
        except MissingKey:
            unread[site.site] = "no copy yet"
        except (StoreError, ValueError) as error:
            unread[site.site] = str(error)
    return copies, unread


def write_secrets(path: Path, secrets: dict[str, str]) -> None:
    """`NAME='value'` lines, readable by the owner only, created 0600 (never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{name}={shlex.quote(value)}\n" for name, value in sorted(secrets.items()))


def destination(site: SiteOutputs) -> str:
    """Where the site keeps its copy of the Inventory: its store, at the key the engine reads."""
    return f"{Store(site)}: {INVENTORY_COPY}"


def publish(inventory: Inventory, found: dict[str, str]) -> dict[str, str]:
    """Puts the Inventory into every site's store at once, with the writer credentials just
    pulled (the engine's own path: fleet.INVENTORY_COPY, infra/data/objectstores.py); returns
    site -> "copied" or why not. Never raises for a store: each is tried on its own."""
    os.environ.update(found)  # this process only: the Inventory's env/NAME references resolve to them
    stores = [Store(s) for s in inventory.sites]
    copied, errors = put_all(stores, INVENTORY_COPY, inventory.to_json().encode())
    failures = iter(errors)
    return {store.name: "copied" if store.name in copied else f"failed: {next(failures)}" for store in stores}


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
