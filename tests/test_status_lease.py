"""`status`'s lease line and commit mode, from the report's `lease` entry (infra.status.lease_status)."""
from __future__ import annotations

from infra import cli


def test_the_status_line_says_who_holds_the_lease_or_that_the_primary_fenced_itself_and_why():
    held = {"holder": "aws", "epoch": 1, "state": "held", "length": 8.0, "age_seconds": 0.4, "fenced": False}
    assert cli._lease_line(held) == "lease: aws at epoch 1 held (8.0 s, renewed 0.4 s ago)"
    fenced = {**held, "state": "fenced", "fenced": True, "why": "lost the lease at 2 of 3 stores (renewed at 1)"}
    assert "aws at epoch 1 is FENCED[/red]: lost the lease at 2 of 3 stores" in cli._lease_line(fenced)
    assert cli._lease_line({"holder": None}).startswith("lease: none in any store")


def test_status_prints_the_asynchronous_commit_mode(capsys):
    report = {"active": "aws", "epoch": 1, "sites": [],
              "lease": {"holder": "aws", "epoch": 1, "state": "held", "length": 8.0, "fenced": False,
                        "commit": {"mode": "asynchronous", "reason": "no standby of ... streamed for 5 s"}}}
    cli._render_status(report)
    out = capsys.readouterr().out
    assert "ASYNCHRONOUS: no standby of ... streamed for 5 s" in out and "lease: aws at epoch 1 held" in out
