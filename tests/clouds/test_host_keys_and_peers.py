"""Issue 14, items 1 and 3: every site's VMs boot with the host key the toolkit made (known to
the engine before first contact), and PostgreSQL admits the peers that the other stacks export.

The programs run under Pulumi mocks (tests/fixtures/pulumi/mock_run.py), whose StackReferences
read the recorded outputs of the named stack, or the outputs a run gives them."""
from __future__ import annotations

import json
import socket
import stat
import sys
import threading
from pathlib import Path

import paramiko
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "pulumi"))
from mock_run import host_key, run_stacks  # noqa: E402

from infra import inventory_pull as pull  # noqa: E402
from infra.clouds import base, hostkey  # noqa: E402
from infra.inventory_cli import app  # noqa: E402
from infra.sites.contract import SiteOutputs  # noqa: E402
from infra.sites.site import KNOWN_HOSTS_ENV, Site, SiteError, SshSettings  # noqa: E402
from tests.clouds.test_pulumi_programs import VM_TYPES, _world_sources, of, user_data, yaml_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ROOT / "tests" / "fixtures" / "pulumi" / "outputs"
STACKS = ("aws", "gcp", "azure")
DB_PORT = 15432
# Where the mocks put each peer's database: addresses none of the stack files name.
PEER_HOSTS = {"aws": "198.51.100.11", "gcp": "198.51.100.12", "azure": "198.51.100.13"}
SECRET_USER_DATA = {"aws": "userData", "gcp": "metadata.user-data", "azure": "osProfile.customData"}


def peers_of(stack: str, hosts: dict[str, str] = PEER_HOSTS) -> dict:
    return {"mock:stack_outputs": {f"example-org/failover/{peer}": {"db_host": hosts[peer]}
                                   for peer in STACKS if peer != stack}}


def scaled(stack: str) -> dict:
    """Azure as primary: its pilot-light has a database VM only; the app VMs check the key too."""
    return {"failover:site": {**yaml_config(stack)["failover:site"], "role": "primary"}} if stack == "azure" else {}


@pytest.fixture(scope="module")
def runs():
    moved = {peer: host.replace("198.51.100.", "203.0.113.2") for peer, host in PEER_HOSTS.items()}
    variants = {stack: (stack, scaled(stack) | peers_of(stack)) for stack in STACKS}
    variants |= {f"{stack}-moved": (stack, scaled(stack) | peers_of(stack, moved)) for stack in STACKS}
    variants["azure-first-deploy"] = ("azure", {"failover:first_deploy": True, "mock:stack_outputs": {}})
    return run_stacks(variants)


@pytest.mark.parametrize("stack", STACKS)
def test_postgres_admits_exactly_the_peer_stacks_db_hosts_and_the_own_app_subnet(runs, stack):
    ports = _world_sources(runs[stack], stack)
    app_subnet = base.subnets(yaml_config(stack)["failover:network_cidr"]).app
    assert ports[DB_PORT] == {f"{PEER_HOSTS[p]}/32" for p in STACKS if p != stack} | {app_subnet}
    references = {r["name"] for r in of(runs[stack], "pulumi:pulumi:StackReference")}
    assert references == {f"example-org/failover/{p}" for p in STACKS if p != stack}
    moved = _world_sources(runs[f"{stack}-moved"], stack)[DB_PORT]
    assert moved == {f"{PEER_HOSTS[p].replace('198.51.100.', '203.0.113.2')}/32" for p in STACKS if p != stack} | {app_subnet}


@pytest.mark.parametrize("stack", STACKS)
def test_every_vm_boots_with_the_stacks_host_key_as_a_secret_and_peers_leave_it_unchanged(runs, stack):
    private = host_key(stack)
    public = hostkey.public_key(private, stack)
    vms = of(runs[stack], VM_TYPES[stack])
    assert len(vms) == 2  # the app VM and the database VM share the site's key
    for vm in vms:
        data = user_data(stack, vm)
        body = "".join(line.strip() + "\n" for line in private.strip().splitlines())
        assert body in "".join(line.strip() + "\n" for line in data.splitlines())
        assert f"  ed25519_public: {public}\n" in data
        assert "ssh_deletekeys: true\nssh_genkeytypes: []\n" in data
        # The SDK marks the whole input that holds a secret (GCP's metadata, Azure's osProfile).
        assert any(SECRET_USER_DATA[stack].startswith(path) for path in vm["secret_inputs"]), vm["secret_inputs"]
    after = {vm["name"]: user_data(stack, vm) for vm in of(runs[f"{stack}-moved"], VM_TYPES[stack])}
    assert after == {vm["name"]: user_data(stack, vm) for vm in vms}


@pytest.mark.parametrize("stack", STACKS)
def test_the_public_host_key_is_exported_and_the_private_one_nowhere(runs, stack):
    run = runs[stack]
    assert run["outputs"][hostkey.OUTPUT] == hostkey.public_key(host_key(stack), stack)
    assert hostkey.OUTPUT not in run["secrets"]
    private_body = host_key(stack).strip().splitlines()[1]
    assert private_body not in json.dumps(run["outputs"])


def test_a_missing_host_key_names_the_stack_the_key_and_the_command():
    with pytest.raises(RuntimeError) as failed:
        run_stacks({"gcp-no-key": ("gcp", {"failover:ssh_host_key": None})})
    assert ("stacks/Pulumi.gcp.yaml: config.failover:ssh_host_key is not set on stack gcp" in str(failed.value)
            and "failover inventory hostkeys --stacks gcp --doit" in str(failed.value))


def test_a_peer_stack_that_does_not_exist_fails_the_run_and_first_deploy_reads_none(runs):
    with pytest.raises(RuntimeError, match="unknown stack 'example-org/failover/aws'"):
        run_stacks({"azure-alone": ("azure", {"mock:stack_outputs": {}})})
    first = runs["azure-first-deploy"]
    assert not of(first, "pulumi:pulumi:StackReference")
    assert _world_sources(first, "azure")[DB_PORT] == {base.subnets("10.30.0.0/16").app}
    assert any("failover:first_deploy is set" in w and "example-org/failover/aws" in w for w in first["warnings"])
    assert user_data("azure", of(first, VM_TYPES["azure"])[0]) == user_data(
        "azure", next(vm for vm in of(runs["azure"], VM_TYPES["azure"]) if vm["name"] == "azure-db"))


def test_peer_stacks_naming_the_stack_itself_are_refused():
    with pytest.raises(RuntimeError, match="config.failover:peer_stacks: names this stack"):
        run_stacks({"aws-self": ("aws", {"failover:peer_stacks": ["gcp", "failover/aws"]})})


# ---- the engine's side: known_hosts from the pulled outputs -----------------------------------

def outputs_with_keys() -> tuple[dict[str, str], dict[str, str]]:
    """The recorded outputs, each with a fresh host key exported; and the private keys."""
    texts, privates = {}, {}
    for stack in STACKS:
        privates[stack], public = hostkey.generate(stack)
        data = json.loads((OUTPUTS / f"{stack}.json").read_text()) | {hostkey.OUTPUT: public}
        texts[stack] = json.dumps(data)
    return texts, privates


def _pkey(private: str) -> paramiko.PKey:
    import io
    return paramiko.Ed25519Key.from_private_key(io.StringIO(private))


def test_known_hosts_holds_every_ssh_host_with_its_sites_key_and_paramiko_checks_them(tmp_path):
    texts, privates = outputs_with_keys()
    text, lacking = pull.known_hosts(texts)
    assert lacking == []
    path = tmp_path / "known_hosts"
    path.write_text(text)
    known = paramiko.HostKeys(str(path))
    for stack in STACKS:
        hosts = json.loads(texts[stack])["ssh_hosts"]
        assert hosts and all(known.check(host, _pkey(privates[stack])) for host in hosts)
        other = next(s for s in STACKS if s != stack)
        assert not any(known.check(host, _pkey(privates[other])) for host in hosts)
    assert len(text.splitlines()) == sum(len(json.loads(t)["ssh_hosts"]) for t in texts.values())


def test_a_stack_without_a_host_key_is_named_by_the_pull(tmp_path):
    texts, _ = outputs_with_keys()
    texts["gcp"] = (OUTPUTS / "gcp.json").read_text()  # deployed before host keys
    text, lacking = pull.known_hosts(texts)
    assert lacking == ["gcp"] and "203.0.113.21" not in text
    (tmp_path / "from").mkdir()
    for stack, body in texts.items():
        (tmp_path / "from" / f"{stack}.json").write_text(body)
    result = CliRunner().invoke(app, ["pull", "--from", str(tmp_path / "from"), "--workdir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["no_host_key"] == ["gcp"] and Path(report["known_hosts"]) == tmp_path / "known_hosts"
    assert (tmp_path / "known_hosts").read_text() == text


def test_the_engine_finds_the_pulled_known_hosts_in_the_workdir(tmp_path, monkeypatch):
    monkeypatch.delenv(KNOWN_HOSTS_ENV, raising=False)
    (tmp_path / "known_hosts").write_text("")
    assert SshSettings.from_env(tmp_path / "vms" / "ssh", tmp_path).known_hosts == tmp_path / "known_hosts"
    (tmp_path / "vms" / "ssh").mkdir(parents=True)
    (tmp_path / "vms" / "ssh" / "known_hosts").write_text("")  # the local cloud's own wins
    assert SshSettings.from_env(tmp_path / "vms" / "ssh", tmp_path).known_hosts == tmp_path / "vms" / "ssh" / "known_hosts"
    monkeypatch.setenv(KNOWN_HOSTS_ENV, "/elsewhere/known_hosts")
    assert SshSettings.from_env(tmp_path / "vms" / "ssh", tmp_path).known_hosts == Path("/elsewhere/known_hosts")


class _NoLogin(paramiko.ServerInterface):
    def get_allowed_auths(self, username):
        return "publickey"


def _serve_once(address: str, key: paramiko.PKey) -> threading.Thread:
    """A one-connection SSH server on address:22 presenting `key`, refusing every login."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((address, 22))
    except OSError as error:
        pytest.skip(f"cannot listen on {address}:22 ({error})")
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        transport = paramiko.Transport(conn)
        transport.add_server_key(key)
        try:
            transport.start_server(server=_NoLogin())
            transport.accept(5)
        except (paramiko.SSHException, EOFError):
            pass
        finally:
            transport.close()
            listener.close()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("presented", ["its own", "another"])
def test_the_engines_ssh_accepts_the_pulled_key_and_refuses_another(tmp_path, presented):
    """Site's own connection path (RejectPolicy + the pulled known_hosts) against a paramiko
    server on loopback: the site's key gets as far as the login; another key is a host-key error."""
    site_key, _ = hostkey.generate("aws")
    client_key, _ = hostkey.generate("operator")
    address = "127.0.94.1" if presented == "its own" else "127.0.94.2"
    data = json.loads((OUTPUTS / "aws.json").read_text())
    data |= {"ssh_hosts": [address], "db_host": address, hostkey.OUTPUT: hostkey.public_key(site_key, "aws")}
    text, _ = pull.known_hosts({"aws": json.dumps(data)})
    (tmp_path / "known_hosts").write_text(text)
    (tmp_path / "id_ed25519").write_text(client_key)
    (tmp_path / "id_ed25519").chmod(0o600)
    served = _pkey(site_key if presented == "its own" else hostkey.generate("mallory")[0])
    thread = _serve_once(address, served)
    site = Site(SiteOutputs.from_dict(data), SshSettings(tmp_path / "known_hosts", tmp_path / "id_ed25519", 5.0))
    with pytest.raises(SiteError) as failed:
        site.connection()
    thread.join(10)
    if presented == "its own":
        assert "refused the key" in str(failed.value)  # the host was verified; only the login failed
    else:
        assert "presented a host key different" in str(failed.value)


# ---- failover inventory hostkeys -------------------------------------------------------------

def test_hostkeys_makes_one_0600_key_per_stack_keeps_it_and_shows_a_stdin_command(tmp_path):
    args = ["hostkeys", "--stacks", "aws,gcp", "--workdir", str(tmp_path), "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    rows = json.loads(first.stdout)
    for row in rows:
        path = Path(row["key_file"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert row["public_key"] == hostkey.public_key(path.read_text(), row["stack"])
        assert row["command"] == (f"pulumi config set --secret --stack {row['stack']} failover:ssh_host_key < {path}")
        assert path.read_text().strip().splitlines()[1] not in first.output  # the private key is never printed
        assert path.with_name(f"{row['stack']}.pub").read_text() == row["public_key"] + "\n"
    again = json.loads(CliRunner().invoke(app, args).stdout)
    assert [r["public_key"] for r in again] == [r["public_key"] for r in rows]  # kept: user-data stays


def test_hostkeys_doit_passes_the_key_on_stdin_never_in_argv(tmp_path, monkeypatch):
    """A stand-in `pulumi` on PATH records its arguments and its standard input."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/argv\ncat > {tmp_path}/stdin\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    result = CliRunner().invoke(app, ["hostkeys", "--stacks", "azure", "--workdir", str(tmp_path / "w"),
                                      "--doit", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["status"] == "set"
    private = (tmp_path / "w" / "hostkeys" / "azure").read_text()
    assert (tmp_path / "argv").read_text() == "config set --secret --stack azure failover:ssh_host_key\n"
    assert (tmp_path / "stdin").read_text() == private
