"""`failover local up` checks before it acts: no VM, no PostgreSQL, no server of its own (127.0.79.x)."""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra import cli
from infra.dns.local import DEFAULT_PORT
from infra.errors import FailoverError
from infra.sites.localvms import LocalVms, witness_names
from infra.sites.vmcloud import VmCloud
from infra.spec import Witness, load_spec

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "127.0.79"
SPEC = load_spec(ROOT / "Pulumi.yaml")


@pytest.mark.parametrize("host, port, named", [
    (53, DEFAULT_PORT, "a DNS provider"),
    (1, SPEC.app.port, "aws's app"),
])
def test_a_new_local_cloud_refuses_a_prefix_where_something_already_answers(tmp_path, monkeypatch, host, port, named):
    def past_the_check(*args, **kwargs):
        raise AssertionError("`local up` went past its checks")

    # Should the check ever miss, the test must not go on to boot VMs (and mount /dev) in tmp_path.
    monkeypatch.setattr(VmCloud, "_local_secrets", past_the_check)
    monkeypatch.setattr(LocalVms, "up", past_the_check)
    address = f"{PREFIX}.{host}"
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((address, port))
        squatter.listen()
        with pytest.raises(FailoverError) as refused:
            VmCloud(tmp_path / "cloud").up(SPEC, 3, PREFIX, 5)
    message = str(refused.value)
    assert f"{address}:{port} ({named})" in message, message
    assert "failover local down" in message and "--prefix" in message
    assert not (tmp_path / "cloud").exists(), "nothing may be created before the check"


def _witness(name: str) -> Witness:
    return Witness(name=name, provider="backblaze", storage="s3", bucket="social-witness", region="us-west-004",
                   credentials={"s3-key": "env/K", "s3-key-secret": "env/S"})


def test_local_witness_stores_stand_in_for_the_specs_witnesses():
    witnessed = dataclasses.replace(SPEC, witnesses=(_witness("b2"), _witness("witness-1")))
    assert witness_names(witnessed) == ["b2", "witness-1"]  # by default, as many as the spec declares
    assert witness_names(witnessed, 0) == []
    assert witness_names(witnessed, 1) == ["b2"]
    assert witness_names(witnessed, 4) == ["b2", "witness-1", "witness-2", "witness-3"]  # never a name twice
    assert witness_names(SPEC) == [] and witness_names(SPEC, 2) == ["witness-1", "witness-2"]


def test_local_up_leaves_the_witness_count_to_the_spec_unless_told(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(VmCloud, "up", lambda self, spec, count, prefix, seed_mb, storage, witnesses:
                        asked.append(witnesses) or {"sites": [], "seconds": {"total": 0}, "inventory": ""})
    base = ["local", "up", "--prefix", PREFIX, "--workdir", str(tmp_path), "--json"]
    for extra in ([], ["--witnesses", "0"], ["--witnesses", "2"]):
        result = CliRunner().invoke(cli.app, base + extra)
        assert result.exit_code == 0, result.output
    assert asked == [None, 0, 2]
    refused = CliRunner().invoke(cli.app, base + ["--witnesses", "-1"])
    assert refused.exit_code == 2 and "--witnesses must be 0 or more" in refused.output
