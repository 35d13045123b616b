"""`python -m infra.bench`: measure on local Debian VMs over SSH, print the figures side by side (and
beside the in-process figures from before #9), write docs/benchmarks.md and its chart."""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from infra.bench import chart, cluster, drills, overhead, report, restore, stats
from infra.sites.site import DB_VERSION
from infra.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("restore", "drills", "overhead")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--sizes", default="0.25,1", help="seed sizes in GB, comma-separated (default 0.25,1)")
    parser.add_argument("--large", action="store_true", help="add the 4 GB size")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per restore method and pgbench mode (default 3)")
    parser.add_argument("--scenarios", default="warm,pilot-light", help="drill scenarios (default warm,pilot-light)")
    parser.add_argument("--skip", default="", help=f"parts to leave out, comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--pgbench-seconds", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/failover-bench"))
    parser.add_argument("--prefix", default=cluster.PREFIX,
                        help=f"loopback prefix of the restore and overhead VMs (PREFIX.1-3; default {cluster.PREFIX})")
    parser.add_argument("--drill-prefix", default=drills.PREFIX,
                        help=f"loopback prefix of the drills' local cloud (PREFIX.1-3, DNS .53/.54; default {drills.PREFIX})")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="the markdown to write (the chart goes to img/benchmarks.png beside it)")
    parser.add_argument("--project", type=Path, default=ROOT / "Pulumi.yaml")
    parser.add_argument("--render", type=Path, metavar="RESULT_JSON",
                        help="only rewrite the markdown and chart from a saved result.json")
    args = parser.parse_args(argv)
    args.size_list = [float(s) for s in args.sizes.split(",") if s] + ([4.0] if args.large else [])
    args.skip_set = {s for s in args.skip.split(",") if s}
    if args.runs < 1 or not args.size_list or args.skip_set - set(PARTS):
        parser.error("--runs must be >= 1, --sizes non-empty and --skip among " + ", ".join(PARTS))
    if not all(p.startswith("127.") for p in (args.prefix, args.drill_prefix)) or args.prefix == args.drill_prefix:
        parser.error("--prefix and --drill-prefix must be two different prefixes inside 127.0.0.0/8")
    return args


def progress(message: str) -> None:
    print(f"• {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def environment() -> dict:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"cpus": os.cpu_count(), "memory_gb": round(pages / 2**30), "kernel": f"Linux {platform.release()}",
            "postgres": "?", "pgbackrest": "?", "loadavg_start": _load()}


def host_versions(site) -> dict:
    """PostgreSQL's and pgBackRest's versions on a VM host (the image's), asked over SSH."""
    found = {}
    for key, command in (("postgres", f"/usr/lib/postgresql/{DB_VERSION}/bin/postgres --version"), ("pgbackrest", "pgbackrest version"),
                         ("debian", "cat /etc/debian_version")):
        output = site.service().run(command, warn=True).stdout
        match = re.search(r"\d+\.\d+(\.\d+)?", output)
        found[key] = match.group(0) if match else "?"
    return found


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render, args.out)
    spec = load_spec(args.project)
    started = time.monotonic()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # the postgres user must traverse it
    result = {"started": datetime.now().astimezone().isoformat(timespec="seconds"), "arguments": " ".join(argv),
              "environment": environment(), "prefixes": {"sites": args.prefix, "drills": args.drill_prefix},
              "restore": [], "drills": [], "overhead": {}, "notes": [], "restore_notes": []}
    cache = cluster.drop_caches()
    result["environment"]["drop_caches"] = "yes (`sync; echo 3 > /proc/sys/vm/drop_caches` as root)" if not cache else f"no: {cache}"
    try:
        if "restore" not in args.skip_set:
            for size in args.size_list:
                bench = cluster.Bench(work / f"restore-{size:g}", spec, args.prefix)
                try:
                    result["restore"].append(restore.measure(bench, size, cluster.seed_mb_for(size), args.runs, progress))
                    result["environment"].update(host_versions(bench.primary))
                finally:
                    bench.remove()
        if "overhead" not in args.skip_set:
            bench = cluster.Bench(work / "overhead", spec, args.prefix)
            try:
                result["overhead"] = overhead.measure(bench, args.runs, progress, seconds=args.pgbench_seconds)
                result["overhead"]["run"] = {"started": result["started"], "arguments": result["arguments"]}
                result["environment"].update(host_versions(bench.primary))
            finally:
                bench.remove()
        if "drills" not in args.skip_set:
            for size in args.size_list:
                for scenario in [s for s in args.scenarios.split(",") if s]:
                    result["drills"].append(drills.run_drill(scenario, size, work, spec, args.project, progress,
                                                             prefix=args.drill_prefix))
    finally:
        result["duration_seconds"] = time.monotonic() - started
        result["environment"]["loadavg_end"] = _load()
        result["notes"] = notes(result)
        (work / "result.json").write_text(json.dumps(result, indent=2, default=str))
    write(result, args.out)
    progress(f"measured in {result['duration_seconds'] / 60:.1f} min; raw figures in {work / 'result.json'}")
    return 0


def notes(result: dict) -> list[str]:
    prefixes = result.get("prefixes", {})
    lines = [
        (f"Restore and overhead sites are three Debian 12 VMs (chroots over overlayfs with their own sshd, "
         f"infra/sites/localvms.py) on {prefixes.get('sites', '127.0.50')}.1-3, protected by `sites protect`'s "
         "function (TLS, the synchronous warm replica, the pilot-light's WAL stream, pgBackRest with every "
         "site's store as a repository); every timed command runs on a VM host through `Site.service()` over SSH. "
         f"Drills use `failover local up` and `failover drill` (the same VMs) on {prefixes.get('drills', '127.0.51')}.x. "
         "Everything binds 127.0.0.0/8 only and is taken down (VMs by PID, every mount undone)."),
        ("pgBackRest restores on the pilot-light's host from the warm site's posix repository (repo2, a host "
         "directory bind-mounted into every VM as a network share would be) into its emptied data directory, "
         "with process-max 2 and the backup compressed with lz4 as configured; its time covers the restore "
         "command only, not WAL replay to consistency at startup (the drill's restore step includes that). "
         "cp -a copies the primary's data directory on its host; pg_dump and pg_restore run on the primary's "
         "host through its unix socket (before #9 they ran from the operator over TCP). The VMs' disks are "
         "overlayfs upper layers on the machine's disk, so a VM's writes pass through overlayfs."),
        ("The page cache is dropped from the operator's side before each method (`sync; echo 3 > "
         "/proc/sys/vm/drop_caches`): the VMs are chroots on this machine's kernel, so that is their cache too."),
        ("The source data directory is measured after seeding and a WAL trim (a restart with wal_keep_size 0, "
         "min_wal_size 32MB and max_wal_size 64MB, a WAL switch through every segment the seeding's checkpoints "
         "had recycled for reuse, 640 MB at 1 GB, then checkpoints once the archiver caught up), so cp -a copies "
         "data rather than WAL (pgBackRest writes an empty pg_wal). A size names the database files (data directory without pg_wal) it aims at."),
        ("Seeding: `infra.app.seed.seed` computes follows with int4 arithmetic that overflows above about 60 MB "
         "(`integer out of range`), so the bench seeds 50 MB with it and grows `posts` with rows of the same shape "
         "(bigint generate_series) to the size, then runs VACUUM ANALYZE, as autovacuum would have in a database that "
         "has lived. Without it the drill's own integrity read just before the cut-off sets every page's hint bits, "
         "and with data checksums each page's first hint after a checkpoint is WAL-logged as a full-page image "
         "(measured: 25 MB of WAL for reading a fresh 223 MB table), which a restored site replays as 8 KB page "
         "writes before it takes writes. Drills therefore run on a cloud brought up with `failover local up "
         "--seed-mb 50`, grown the same way through psql on the primary's host over SSH (the synchronous replica "
         "follows), backed up anew with "
         "`failover snapshot --type full` into every repository, then handed to `failover drill`, which reuses a "
         "pristine cloud."),
        ("The naive path is timed from pg_dump's start to pg_restore's end (a fresh cluster, started beforehand, "
         "with archiving off); its index builds and constraint checks are the price of a logical restore."),
        "Every timed restore operation ends with `sync` on its host, so buffered writes count alike for all methods.",
        ("`RTO - TTL` subtracts the record's TTL as the issue's target does; it is negative when the canary saw the "
         "new address before a full TTL elapsed, i.e. the TTL was not the bound on this run."),
    ]
    lines += [(f"At {m['size_gb']:g} GB pgBackRest wrote {m['restored_bytes'] / 2**20:.0f} MB (no pg_wal) where cp -a "
               f"wrote {m['datadir_bytes'] / 2**20:.0f} MB, and it reads an lz4-compressed repository with two "
               "processes: that is how it can beat the plain copy, and with a spread near 100% on cp -a a ratio "
               "above 1 means 'about the copy's speed' rather than 'faster than the disk'.")
              for m in result.get("restore", []) if m.get("restored_bytes") and _beats_copy(m)][-1:]
    if result.get("overhead", {}).get("tps"):
        lines.append("pgbench runs of 20 s vary between repetitions (see the per-run tps; 5-15% on a quiet machine): "
                     "the overhead percentages are medians and differ by several points from run to run. A negative cost means "
                     "that mode's median beat `off`; protection does not speed the primary up, so read it as that "
                     "row's noise.")
    else:
        lines.append("The overhead part (pgbench cost of protection) was not run this time (`--skip overhead`); "
                     "the in-process figures below are the latest.")
    if any(m.get("cache_note") for m in result.get("restore", [])):
        lines.append("Dropping the page cache failed during the run: " + result["restore"][0]["cache_note"])
    lines += result.get("conditions", [])  # what the person who ran it saw of the machine (added before --render)
    broken = [d for d in result.get("drills", []) if d["result"] == "error"]
    lines += [f"The {d['scenario']} drill at {d['size_gb']:g} GB produced no figures: {d['error']}" for d in broken]
    return lines


def _beats_copy(measured: dict) -> bool:
    row = stats.restore_row(measured)
    return (row.get("pgbackrest_vs_copy") or 0) > 1


def render(result_file: Path, out: Path) -> int:
    """Rewrites the markdown and chart from a saved result.json (no measuring)."""
    import json as _json

    result = _json.loads(result_file.read_text())
    result["notes"] = notes(result)
    write(result, out)
    return 0


def write(result: dict, out: Path) -> None:
    print(report.text(result))
    image = out.parent / "img" / "benchmarks.png"
    chart.draw(result, image)
    out.write_text(report.markdown(result, os.path.relpath(image, out.parent)))
    progress(f"wrote {out} and {image} ({image.stat().st_size // 1024} KB)")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
