"""`scripts/bench`: restore throughput, drill RTO/RPO and protection overhead, measured side by side.

Benchmarks live apart from the tests: they print figures and write docs/benchmarks.md with a
chart; targets from issue 9 (and issue 8's that still apply) are reported as pass/fail, never
asserted. The sites are local Debian VMs reached over SSH, as the engine reaches them; the
in-process figures from before #9 are kept as data (baseline) and shown beside the new ones.
The pure arithmetic and rendering (stats, report, baseline) are tested with data; the measuring
modules (cluster, restore, overhead, drills) drive real VMs, PostgreSQL, pgBackRest and the
`failover` command.
"""
