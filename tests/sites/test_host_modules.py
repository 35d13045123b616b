"""The programs the hosts run (the protector, the app, the seed) import with what a site's host
has: Debian's python3 with the packages infra/sites/vm.py installs (psycopg, no requests, no
botocore, no cryptography). The operator's machine has more; a module-level import of it in
anything these load stops the protector on every host."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

HOST_PROGRAMS = ("infra.data.replicator", "infra.data.rejoin", "infra.app.server", "infra.app.seed")
OPERATOR_ONLY = ("requests", "botocore", "boto3", "cryptography", "pulumi", "typer", "rich", "octodns")


def test_the_hosts_programs_import_without_the_operators_packages():
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in OPERATOR_ONLY)
    code = f"import sys; {blocked}; " + "; ".join(f"import {module}" for module in HOST_PROGRAMS)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
