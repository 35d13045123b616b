"""A failed image build names the failure and its log, and leaves no half image to boot from."""
from __future__ import annotations

import os
import shutil

import pytest

from infra.sites.vm import VmError, ensure_image, image_key

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mmdebstrap"), reason="needs root and mmdebstrap")]


def test_a_failed_build_is_named_with_its_log_and_leaves_no_image(tmp_path, monkeypatch):
    monkeypatch.setenv("FAILOVER_IMAGE_CACHE", str(tmp_path))
    packages = ("openssh-server", "no-such-package-failover-test")
    with pytest.raises(VmError, match=r"the VM image build failed \(mmdebstrap exit \d+\).*full log .*\.log"):
        ensure_image(packages=packages)
    key = image_key(packages)
    assert not (tmp_path / key).exists() and not (tmp_path / f"{key}.partial").exists()
    assert "no-such-package-failover-test" in (tmp_path / f"{key}.log").read_text()
