"""The benchmark chart: restore MB/s per method and size, drill RTO per scenario, pgbench tps per mode."""
from __future__ import annotations

from pathlib import Path

from infra.bench import stats
from infra.bench.report import LABELS

COLORS = {"copy": "tab:gray", "pgbackrest": "tab:blue", "dump": "tab:orange"}


def draw(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1.4, 1.2, 1]})
    _restore(axes[0], [stats.restore_row(m) for m in result.get("restore", [])])
    _drills(axes[1], result.get("drills", []))
    _overhead(axes[2], result.get("overhead", {}).get("tps", {}))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _restore(ax, rows: list[dict]) -> None:
    width = 0.27
    for i, method in enumerate(stats.METHODS):
        xs = [n + (i - 1) * width for n in range(len(rows))]
        values = [r[f"{method}_mb_s"] or 0 for r in rows]
        bars = ax.bar(xs, values, width, color=COLORS[method], label=LABELS[method])
        for bar, r in zip(bars, rows):
            share = r[f"{method}_vs_copy"]
            if share is not None:
                ax.annotate(f"{share:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [f"{r['size_gb']:g} GB\n({r['datadir_mb']:.0f} MB)" for r in rows])
    ax.set_ylabel("MB/s (median)")
    ax.set_ylim(0, max([r[f"{m}_mb_s"] or 0 for r in rows for m in stats.METHODS] + [1]) * 1.45)
    ax.set_title("Restore throughput (x = ratio to cp -a)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def _drills(ax, drills: list[dict]) -> None:
    done = [d for d in drills if d.get("rto_seconds") is not None]
    xs = range(len(done))
    ax.bar([x - 0.2 for x in xs], [d["rto_seconds"] for d in done], 0.4, color="tab:olive", alpha=0.6,
           label="RTO from cut-off (canary, through DNS)")
    ax.bar([x + 0.2 for x in xs], [stats.net_rto(d) for d in done], 0.4, color="tab:green", label="net RTO (beyond TTL)")
    for x, d in zip(xs, done):
        ax.annotate(f"RPO {d['rpo_seconds']:.2f}s\nlost {d['writes_lost']}", (x, d["rto_seconds"]), ha="center",
                    va="bottom", fontsize=7)
    ttls = {d["dns_ttl"] for d in done}
    for ttl in ttls:
        ax.axhline(ttl, color="gray", linestyle="--", linewidth=1, label=f"DNS TTL {ttl}s")
    ax.set_xticks(list(xs), [f"{d['scenario']}\n{d['size_gb']:g} GB" for d in done])
    failed = [f"{d['scenario']} {d['size_gb']:g} GB" for d in drills if d.get("rto_seconds") is None]
    ax.set_ylabel("seconds")
    ax.set_ylim(0, max([d["rto_seconds"] for d in done] + list(ttls) + [1]) * 1.3)
    ax.set_title("Drill RTO" + (f" (no result: {', '.join(failed)})" if failed else ""), fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def _overhead(ax, tps: dict[str, list[float]]) -> None:
    from infra.bench.overhead import MODES

    modes = [m for m in MODES if tps.get(m)]
    values = [stats.median(tps[m]) for m in modes]
    colours = {"off": "tab:gray", "archive": "tab:green", "async": "tab:blue", "async_isolated": "tab:cyan",
               "async_stream": "tab:olive", "async_stream_isolated": "tab:olive",
               "sync": "tab:purple", "sync_isolated": "tab:pink"}
    names = [m.replace("_stream", "\n+stream").replace("_isolated", "\nisolated") for m in modes]
    ax.bar(names, values, color=[colours.get(m, "tab:gray") for m in modes])
    ax.tick_params(axis="x", labelsize=7)
    for n, mode in enumerate(modes):
        for t in tps[mode]:
            ax.plot(n, t, "k.", markersize=4)
    ax.set_ylabel("pgbench tps (median, dots = runs)")
    ax.set_title("Protection overhead on the primary", fontsize=10)
