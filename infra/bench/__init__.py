"""`scripts/bench`: restore throughput, drill RTO/RPO and protection overhead, measured side by side.

Benchmarks live apart from the tests: they print figures and write docs/benchmarks.md with a
chart; targets from issue 8 are reported as pass/fail, never asserted. The pure arithmetic and
rendering (stats, report) are tested with data; the measuring modules (cluster, restore,
overhead, drills) drive real PostgreSQL, pgBackRest and the `failover drill` command.
"""
