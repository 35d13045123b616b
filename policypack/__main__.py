"""The CrossGuard pack: `pulumi preview --policy-pack policypack`. The checks live in infra/policy.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import PolicyPack  # noqa: E402

from infra.policy import policies  # noqa: E402

PolicyPack(name="failover-resilience", policies=policies())
