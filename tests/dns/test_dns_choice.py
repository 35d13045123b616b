"""Which DNS providers the engine moves is chosen explicitly, never by which file exists."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.dns.site import CHOICE_ENV, choose_providers, dns_config
from infra.errors import FailoverError

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "Pulumi.yaml"


def local_providers_file(workdir: Path) -> None:
    (workdir / "dns").mkdir()
    (workdir / "dns" / "providers.yaml").write_text(yaml.safe_dump({"zone": "local.example.", "providers": {
        "knot-a": {"class": "octodns_bind.Rfc2136Provider", "vendor": "local-knot-a",
                   "args": {"host": "127.0.0.53", "port": 5353}}}}))


def test_a_providers_file_alone_does_not_choose_the_local_dns(tmp_path, monkeypatch):
    monkeypatch.delenv(CHOICE_ENV, raising=False)
    local_providers_file(tmp_path)
    config = dns_config(tmp_path, PROJECT)
    assert "config.dns.providers" in config.source and [p.name for p in config.providers] != ["knot-a"]


def test_local_up_s_choice_selects_the_local_servers(tmp_path, monkeypatch):
    monkeypatch.delenv(CHOICE_ENV, raising=False)
    local_providers_file(tmp_path)
    choose_providers(tmp_path, "local")
    config = dns_config(tmp_path, PROJECT)
    assert [p.name for p in config.providers] == ["knot-a"] and config.zone == "local.example."
    monkeypatch.setenv(CHOICE_ENV, "spec")  # the environment overrides the work directory
    assert "config.dns.providers" in dns_config(tmp_path, PROJECT).source


def test_a_choice_without_its_servers_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(CHOICE_ENV, raising=False)
    choose_providers(tmp_path, "local")
    with pytest.raises(FailoverError, match=r"dns\.json chooses the local cloud's DNS providers.*local up"):
        dns_config(tmp_path, PROJECT)
    monkeypatch.setenv(CHOICE_ENV, "route53")
    with pytest.raises(FailoverError, match=f"{CHOICE_ENV}: DNS providers must be local or spec"):
        dns_config(tmp_path, PROJECT)
