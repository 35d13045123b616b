"""The Pulumi programs type-check against the installed SDKs (pyright): an argument name, a
nested args shape or an enum value the SDK does not accept fails here, not at `pulumi up`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ["infra/clouds", "infra/__main__.py"]


def test_the_programs_type_check_clean_against_the_sdks():
    pyright = shutil.which("pyright", path=str(Path(sys.executable).parent))
    if pyright is None:
        pytest.fail("pyright is not installed in this environment: run scripts/setup")
    result = subprocess.run([pyright, "--outputjson", "--pythonpath", sys.executable, *CHECKED], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    report = json.loads(result.stdout)
    errors = [f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message'].splitlines()[0]}"
              for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert not errors, "\n".join(errors)
    assert report["summary"]["filesAnalyzed"] >= 6, report["summary"]
