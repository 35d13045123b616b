"""`failover local up` checks before it acts (no PostgreSQL, no servers of its own)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from infra.errors import FailoverError
from infra.dns.local import DEFAULT_PORT
from infra.sites import bringup
from infra.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "127.0.62"


@pytest.mark.parametrize("host, port, named", [
    (53, DEFAULT_PORT, "a DNS provider"),
    (1, None, "aws's database"),
])
def test_a_new_local_cloud_refuses_a_prefix_where_something_already_answers(tmp_path, host, port, named):
    spec = load_spec(ROOT / "Pulumi.yaml")
    address, port = f"{PREFIX}.{host}", port or spec.database.port
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((address, port))
        squatter.listen()
        with pytest.raises(FailoverError) as refused:
            bringup.up(tmp_path / "cloud", spec, 3, 5, lambda message: None, PREFIX)
    assert f"{address}:{port} ({named})" in str(refused.value)
    assert "failover local down" in str(refused.value) and "--prefix" in str(refused.value)
    assert not (tmp_path / "cloud").exists(), "nothing may be created before the check"
