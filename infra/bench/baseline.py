"""The previous figures, measured in-process before issue 9 (the process-based local cloud), kept as data.

`scripts/bench --sizes 0.25,1 --large --runs 3` on 2026-12-01T07:30:36+00:00 (44.4 minutes), overhead from
`scripts/bench --skip restore,drills --runs 3` started 2026-12-01T08:15:20+00:00; 2 CPUs, 24 GB RAM,
PostgreSQL 15.18, pgBackRest 2.45, page cache dropped before every timed run. Sites were postmasters on
127.0.50.x started by the operator's own process; every command ran locally, without SSH. The tables are
docs/benchmarks.md's as they were, cell for cell; report.py renders them beside the new figures.
"""
from __future__ import annotations

RUN = ("`scripts/bench --sizes 0.25,1 --large --runs 3` on 2026-12-01T07:30:36+00:00 (44.4 minutes; overhead from "
       "`scripts/bench --skip restore,drills --runs 3` started 2026-12-01T08:15:20+00:00), 2 CPUs, 24 GB RAM, "
       "PostgreSQL 15.18, pgBackRest 2.45, load average 0.26 1.13 1.91 at the start, 1.41 2.50 2.66 at the end")

# name -> (header, rows), each cell as it was printed
TABLES: dict[str, tuple[list[str], list[list[str]]]] = {
    'targets': (
        ['target', 'measured', 'result'],
        [
            ['pgBackRest restore >= 0.6x cp -a at 1 GB', '0.77x', 'pass'],
            ['pgBackRest restore >= 3x pg_dump/pg_restore at 1 GB', '8.62x', 'pass'],
            ['warm RTO - TTL <= 2 s at 0.25 GB', '0.62 s', 'pass'],
            ['warm RTO - TTL <= 2 s at 1 GB', '0.73 s', 'pass'],
            ['warm RTO - TTL <= 2 s at 4 GB', '0.70 s', 'pass'],
            ['warm RTO - TTL flat from 0.25 to 4 GB (within 30%)', '+12%', 'pass'],
            ['pilot-light RTO - TTL <= 15 s at 1 GB', '2.53 s', 'pass'],
            ['pilot-light RPO window <= 1 s at 0.25 GB', '0.00 s (0 acked writes lost)', 'pass'],
            ['pilot-light RPO window <= 1 s at 1 GB', '0.00 s (0 acked writes lost)', 'pass'],
            ['pilot-light RPO window <= 1 s at 4 GB', '0.00 s (0 acked writes lost)', 'pass'],
            ['protection overhead <= 10% tps (archiving + async replica, replica on tmpfs at nice 19)', '5.3%', 'pass'],
            ['protection overhead, archiving only', '-0.8%', 'reported'],
            ['protection overhead, archiving + async replica on the same disk and CPUs', '11.7%', 'reported'],
            ['protection overhead, archiving + async replica + pilot-light WAL stream, tmpfs at nice 19', '-11.8%', 'reported'],
            ['protection overhead, synchronous replica, tmpfs at nice 19', '9.5%', 'reported'],
            ['protection overhead, synchronous replica on the same disk and CPUs', '23.2%', 'reported'],
        ]),
    'restore': (
        ['seed', 'data dir', 'method', 'median s', 'MB/s', 'x copy', 'spread'],
        [
            ['0.25 GB', '334 MB', 'cp -a (machine limit)', '1.26', '264.7', '1.00x', '24%'],
            ['0.25 GB', '334 MB', 'pgBackRest restore (p2, lz4)', '1.58', '211.5', '0.80x', '21%'],
            ['0.25 GB', '334 MB', 'pg_dump -Fd -j2 + pg_restore -j2', '6.32', '52.8', '0.20x', '17%'],
            ['1 GB', '1086 MB', 'cp -a (machine limit)', '2.35', '461.4', '1.00x', '55%'],
            ['1 GB', '1086 MB', 'pgBackRest restore (p2, lz4)', '3.05', '355.9', '0.77x', '4%'],
            ['1 GB', '1086 MB', 'pg_dump -Fd -j2 + pg_restore -j2', '26.29', '41.3', '0.09x', '17%'],
            ['4 GB', '4158 MB', 'cp -a (machine limit)', '9.96', '417.3', '1.00x', '35%'],
            ['4 GB', '4158 MB', 'pgBackRest restore (p2, lz4)', '6.46', '643.7', '1.54x', '16%'],
            ['4 GB', '4158 MB', 'pg_dump -Fd -j2 + pg_restore -j2', '112.41', '37.0', '0.09x', '4%'],
        ]),
    'drills': (
        ['scenario', 'seed', 'result', 'RTO cut-off', 'RTO - TTL', 'runbook to reads', 'runbook to writes', 'net RTO', 'acked', 'lost', 'RPO window'],
        [
            ['warm', '0.25 GB', 'pass', '26.43 s', '-3.57 s', '0.57 s', '0.62 s', '0.62 s', '94', '0', '0.00 s'],
            ['pilot-light', '0.25 GB', 'pass', '26.02 s', '-3.98 s', '3.91 s', '4.14 s', '4.14 s', '97', '0', '0.00 s'],
            ['warm', '1 GB', 'pass', '16.66 s', '-13.34 s', '0.67 s', '0.73 s', '0.73 s', '245', '0', '0.00 s'],
            ['pilot-light', '1 GB', 'pass', '15.70 s', '-14.30 s', '2.14 s', '2.53 s', '2.53 s', '299', '0', '0.00 s'],
            ['warm', '4 GB', 'pass', '5.70 s', '-24.30 s', '0.62 s', '0.70 s', '0.70 s', '1066', '0', '0.00 s'],
            ['pilot-light', '4 GB', 'pass', '32.64 s', '2.64 s', '3.92 s', '4.27 s', '4.27 s', '953', '0', '0.00 s'],
        ]),
    'steps': (
        ['step', 'warm 0.25 GB', 'pilot-light 0.25 GB', 'warm 1 GB', 'pilot-light 1 GB', 'warm 4 GB', 'pilot-light 4 GB'],
        [
            ['preflight', '0.04 s', '0.05 s', '0.05 s', '0.04 s', '0.05 s', '0.05 s'],
            ['fence', '0.00 s', '0.00 s', '0.01 s', '0.00 s', '0.00 s', '0.01 s'],
            ['capacity', '0.07 s', '0.08 s', '0.08 s', '0.09 s', '0.07 s', '0.08 s'],
            ['promote', '0.35 s', '3.68 s', '0.38 s', '1.92 s', '0.38 s', '3.70 s'],
            ['media', '0.19 s', '0.20 s', '0.19 s', '0.23 s', '0.18 s', '0.28 s'],
            ['start_app', '0.02 s', '0.04 s', '0.04 s', '0.03 s', '0.04 s', '0.04 s'],
            ['prepare_dns', '0.07 s', '0.09 s', '0.10 s', '0.13 s', '0.07 s', '0.08 s'],
            ['shift_dns', '0.04 s', '0.05 s', '0.06 s', '0.04 s', '0.05 s', '0.04 s'],
            ['take_writes', '0.08 s', '0.24 s', '0.10 s', '0.41 s', '0.10 s', '0.36 s'],
            ['verify_dns', '0.04 s', '0.03 s', '0.06 s', '0.03 s', '0.04 s', '0.03 s'],
            ['verify_app', '0.01 s', '0.01 s', '0.02 s', '0.01 s', '0.02 s', '0.02 s'],
            ['protect', '8.15 s', '11.54 s', '11.43 s', '15.97 s', '18.17 s', '31.81 s'],
        ]),
    'overhead': (
        ['protection', 'median tps', 'runs (tps)', 'cost vs off'],
        [
            ['off (no archiving, no replica)', '1650', '1650, 1617, 1698', '-'],
            ['archiving to every repository, no replica', '1663', '1743, 1643, 1663', '-0.8%'],
            ['archiving + async replica (same disk and CPUs)', '1456', '1504, 1456, 1374', '11.7%'],
            ['archiving + async replica (tmpfs, nice 19)', '1563', '1759, 1497, 1563', '5.3%'],
            ['archiving + async replica + pilot-light WAL stream (tmpfs, nice 19)', '1845', '1845, 1482, 1868', '-11.8%'],
            ['archiving + synchronous replica (same disk and CPUs)', '1266', '1266, 1146, 1452', '23.2%'],
            ['archiving + synchronous replica (tmpfs, nice 19)', '1493', '1446, 1493, 1641', '9.5%'],
        ]),
    'cpu': (
        ['protection', 'walsenders (primary)', 'archiver + archive-push (primary)', 'replica (all processes)', 'pg_receivewal'],
        [
            ['archiving to every repository, no replica', '0.0%', '0.2%', '0.0%', '0.0%'],
            ['archiving + async replica (same disk and CPUs)', '7.0%', '0.2%', '24.6%', '0.0%'],
            ['archiving + async replica (tmpfs, nice 19)', '7.8%', '0.2%', '18.0%', '0.0%'],
            ['archiving + async replica + pilot-light WAL stream (tmpfs, nice 19)', '12.0%', '0.3%', '19.1%', '4.0%'],
            ['archiving + synchronous replica (same disk and CPUs)', '10.4%', '0.2%', '25.3%', '0.0%'],
            ['archiving + synchronous replica (tmpfs, nice 19)', '10.8%', '0.1%', '19.8%', '0.0%'],
        ]),
}


def cell(table: str, column: str, **match: str) -> str | None:
    """The cell in `column` of the first row of `table` whose cells equal `match` (by header), or None."""
    header, rows = TABLES[table]
    index = {name: i for i, name in enumerate(header)}
    for row in rows:
        if all(row[index[name.replace("_", " ")]] == value for name, value in match.items()):
            return row[index[column]]
    return None


def seconds(text: str | None) -> float | None:
    """A printed figure ('0.73 s', '3.05', '0.77x', '5.3%') as a number, None for '-' or nothing."""
    if not text or text.strip() in ("-", ""):
        return None
    return float(text.split()[0].rstrip("sx%"))
