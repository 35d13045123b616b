"""`failover local up` checks before it acts: no VM, no PostgreSQL, no server of its own (127.0.79.x)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from infra.dns.local import DEFAULT_PORT
from infra.errors import FailoverError
from infra.sites.localvms import LocalVms
from infra.sites.vmcloud import VmCloud
from infra.spec import load_spec

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
