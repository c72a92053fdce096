"""
The report of ``triggerer_polling.py``: tables, the issue's targets and plots, from its JSON alone.

The harness measures and writes ``latest.json``; this reads it and writes ``latest.md`` (the tables,
the targets as measured, notes on what may skew a run) and the plots ``cpu_per_job.png``,
``rss_per_job.png``, ``loop_lag.png`` and ``tradeoff.png`` beside it. The same JSON always gives the
same tables (a test renders docs/benchmarks/latest.json and compares it with latest.md) and the same
plots, so a figure in docs/performance.md can be traced to the run it came from and redrawn without
measuring again.

Run: ``python benchmarks/triggerer_report.py [JSON] [--output-dir DIR]`` (default
``benchmarks/results/latest.json``, output beside it); the plots need the ``benchmark`` extra
(matplotlib), the tables only the standard library.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Other processes using more than this share of the machine during a run get a note under the tables.
OTHER_CORES_NOTE = 0.2
# The issue's targets.
TARGET_REQUESTS_PER_JOB = 2.2
TARGET_CPU_RATIO = 3.0
TARGET_STATE_PER_TASK_KB = 3.0
TARGET_LAG_P99_MS = 10.0
TARGET_LAG_MAX_VS_FLOOR = 2.0
TARGET_MOONSHOT_CORES = 1.0
TARGET_MOONSHOT_RSS_MB = 500.0

Row = dict[str, Any]


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def check(target: str, measured: str, met: bool | None) -> dict[str, Any]:
    """One target as measured; ``met`` is None where a figure is missing."""
    return {"target": target, "measured": measured, "met": met}


def num(row: Row | None, key: str) -> Any:
    return None if row is None else row.get(key)


def lag_ok(row: Row, floor_max: float | None) -> bool | None:
    p99, worst = row.get("lag_p99_ms"), row.get("lag_max_ms")
    if p99 is None or worst is None or floor_max is None:
        return None
    return bool(p99 <= TARGET_LAG_P99_MS and worst <= TARGET_LAG_MAX_VS_FLOOR * floor_max)


def request_targets(main: list[Row], trade: list[Row]) -> list[dict[str, Any]]:
    value = num(find(main, run="ours-eta"), "requests_per_job")
    mine, theirs = (
        num(find(main, run="ours-no-eta"), "requests_per_job"),
        num(find(main, run="peer-5s"), "requests_per_job"),
    )
    late = num(find(trade, kind="ours", eta=False, default_pace=True), "delay_max_s")
    poke_30 = num(find(trade, kind="peer", poke_interval=30.0), "delay_max_s")
    return [
        check(
            f"1. requests per job with an exact eta <= {TARGET_REQUESTS_PER_JOB:g}",
            _v(value),
            _le(value, TARGET_REQUESTS_PER_JOB),
        ),
        check(
            "1. requests per job without eta < the peer's at 5 s",
            f"{_v(mine)} vs {_v(theirs)}",
            _lt(mine, theirs),
        ),
        check(
            "1. without eta (default pace), detection delay max <= a fixed 30 s poke's (trade-off run)",
            f"{_v(late)} s vs {_v(poke_30)} s",
            _le(late, poke_30),
        ),
    ]


def cpu_targets(main: list[Row]) -> list[dict[str, Any]]:
    checks = []
    for scheme, suffix in (("HTTP", ""), ("HTTPS", "-https")):
        mine = num(find(main, run=f"ours-eta{suffix}"), "cpu_per_job_ms")
        theirs = num(find(main, run=f"peer-5s{suffix}"), "cpu_per_job_ms")
        ratio = theirs / mine if mine and theirs else None
        checks.append(
            check(
                f"2. CPU per job >= {TARGET_CPU_RATIO:g}x less than the peer at 5 s, {scheme}",
                f"{_v(mine)} vs {_v(theirs)} ms: {_v(ratio and round(ratio, 2))}x less",
                None if ratio is None else ratio >= TARGET_CPU_RATIO,
            )
        )
    return checks


def batch_targets(main: list[Row]) -> list[dict[str, Any]]:
    batch = next((r for r in main if r["run"].startswith("ours-batch")), None)
    mine, theirs = num(batch, "cpu_per_job_ms"), num(find(main, run="ours-eta"), "cpu_per_job_ms")
    over = num(batch, "rss_over_floor_per_job_kb")
    return [
        check(
            "3. a batch of 10 costs no more CPU per job than single triggers",
            f"{_v(mine)} vs {_v(theirs)} ms",
            _le(mine, theirs),
        ),
        check(
            "3. provider state per task (RSS over the floor), batches of 10 "
            f"<= {TARGET_STATE_PER_TASK_KB:g} KB",
            f"{_v(over)} KB",
            _le(over, TARGET_STATE_PER_TASK_KB),
        ),
    ]


def lag_targets(main: list[Row], floor_max: float | None) -> list[dict[str, Any]]:
    return [
        check(
            f"4. loop lag p99 <= {TARGET_LAG_P99_MS:g} ms and max <= {TARGET_LAG_MAX_VS_FLOOR:g}x the "
            f"floor's, burst of {row['jobs']} jobs: {row['label']}",
            f"p99 {_v(row['lag_p99_ms'])} ms, max {_v(row['lag_max_ms'])} ms (floor max {_v(floor_max)} ms); "
            f"{full_collections(row)}",
            lag_ok(row, floor_max),
        )
        for row in main
        if row["kind"] == "ours"
    ]


def moonshot_targets(rows: list[Row], floor_max: float | None) -> list[dict[str, Any]]:
    moon = find(rows, section="moonshot")
    if moon is None:
        return []
    cores, rss = moon["cores"], moon["rss_peak_mb"]
    met = _lt(cores, TARGET_MOONSHOT_CORES), _lt(rss, TARGET_MOONSHOT_RSS_MB), lag_ok(moon, floor_max)
    return [
        check(
            f"5. moonshot, {moon['jobs']} jobs ({moon['triggers']} x {moon['tasks_per_trigger']}): "
            f"< {TARGET_MOONSHOT_CORES:g} core on average, < {TARGET_MOONSHOT_RSS_MB:g} MB RSS, lag as in 4",
            f"{_v(cores)} cores, {_v(rss)} MB, lag p99 {_v(moon['lag_p99_ms'])} ms / max "
            f"{_v(moon['lag_max_ms'])} ms; {_v(moon['requests_per_job'])} requests per job, "
            f"detection delay max {_v(moon['delay_max_s'])} s, events {moon['statuses']}",
            None if None in met else all(met),
        )
    ]


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The issue's targets against a run's rows."""
    main = [r for r in rows if r["section"] == "main"]
    trade = [r for r in rows if r["section"] == "tradeoff"]
    floor_max = num(find(main, kind="floor"), "lag_max_ms")
    return [
        *request_targets(main, trade),
        *cpu_targets(main),
        *batch_targets(main),
        *lag_targets(main, floor_max),
        *moonshot_targets(rows, floor_max),
    ]


def full_collections(row: dict[str, Any]) -> str:
    """How much of a row's lag was its process's full garbage collections."""
    return (
        f"full GCs {_v(row['full_gc_count'])} (longest {_v(row['full_gc_max_ms'])} ms), "
        f"max lag of the beats that waited on none {_v(row['lag_max_without_full_gc_ms'])} ms"
    )


def _v(value: Any) -> str:
    return "-" if value is None else str(value)


def _le(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a <= b


def _lt(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a < b


# --------------------------------------------------------------------------------------------------
# Output: tables, JSON, plots


def _fmt(value: Any, spec: str = "g", unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{unit}"


def problems(row: Row) -> str:
    """The row's events other than success, as a note after its label."""
    found = {k: v for k, v in row["statuses"].items() if k != "success"}
    return f" ({', '.join(f'{k} {v}' for k, v in found.items())})" if found else ""


def markdown(header: tuple[str, ...], lines: list[list[str]]) -> list[str]:
    """A Markdown table; none at all without lines."""
    if not lines:
        return []
    rule = "|" + "---|" * len(header)
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(cells) + " |" for cells in lines)]


def main_table(rows: list[Row]) -> list[str]:
    header = (
        "row",
        "jobs",
        "req/job",
        "CPU/job",
        "cores",
        "RSS/job",
        "over floor",
        "lag p50 / p99 / max",
        "full GCs: n, longest; max lag without",
        "delay p50 / max",
        "TCP",
        "wall",
    )
    lines = []
    for row in rows:
        if row["section"] not in ("main", "moonshot"):
            continue
        delay = f"{_fmt(row['delay_p50_s'], '.1f')} / {_fmt(row['delay_max_s'], '.1f')} s"
        lines.append(
            [
                f"{row['label']}{problems(row)}",
                str(row["jobs"]),
                _fmt(row["requests_per_job"], ".1f") + (" wake-ups" if row["kind"] == "floor" else ""),
                _fmt(row["cpu_per_job_ms"], ".2f", " ms"),
                _fmt(row["cores"], ".2f"),
                _fmt(row["rss_per_job_kb"], ".1f", " KB"),
                _fmt(row["rss_over_floor_per_job_kb"], ".1f", " KB"),
                f"{_fmt(row['lag_p50_ms'], '.1f')} / {_fmt(row['lag_p99_ms'], '.1f')} "
                f"/ {_fmt(row['lag_max_ms'], '.0f')} ms",
                f"{_fmt(row['full_gc_count'])}, {_fmt(row['full_gc_max_ms'], '.0f', ' ms')}; "
                f"{_fmt(row['lag_max_without_full_gc_ms'], '.0f', ' ms')}",
                # The floor detects nothing: its "delay" is only its pace.
                "-" if row["kind"] == "floor" else delay,
                _fmt(row["tcp_connections"]),
                _fmt(row["wall_s"], ".0f", " s"),
            ]
        )
    return markdown(header, lines)


def sweep_rows(rows: list[Row]) -> list[Row]:
    """The points of the sweep plots and table: plain HTTP rows of a series."""
    return [r for r in rows if r.get("series") and r["scheme"] == "http"]


def sweep_table(rows: list[Row]) -> list[str]:
    header = ("in-flight jobs", "row", "CPU/job", "RSS/job", "lag p99 / max", "req/job")
    lines = [
        [
            str(row["jobs"]),
            row["label"],
            _fmt(row["cpu_per_job_ms"], ".2f", " ms"),
            _fmt(row["rss_per_job_kb"], ".1f", " KB"),
            f"{_fmt(row['lag_p99_ms'], '.1f')} / {_fmt(row['lag_max_ms'], '.0f')} ms",
            _fmt(row["requests_per_job"], ".1f"),
        ]
        for row in sorted(sweep_rows(rows), key=lambda r: (r["jobs"], r["kind"]))
    ]
    return markdown(header, lines)


def tradeoff_table(rows: list[Row]) -> list[str]:
    trade = [r for r in rows if r["section"] == "tradeoff"]
    lines = [
        [
            f"{row['label']}{problems(row)}",
            _fmt(row["requests_per_job"], ".2f"),
            f"{_fmt(row['delay_p50_s'], '.1f')} / {_fmt(row['delay_max_s'], '.1f')} s",
        ]
        for row in sorted(trade, key=lambda r: (r["kind"], not r["eta"], r["requests_per_job"] or 0))
    ]
    return markdown(("trade-off point", "req/job", "delay p50 / max"), lines)


def target_lines(rows: list[Row]) -> list[str]:
    verdicts = {True: "met", False: "NOT met", None: "not measured"}
    return [f"- {item['target']}: {item['measured']} - **{verdicts[item['met']]}**" for item in targets(rows)]


def tables(document: dict[str, Any]) -> str:
    """The Markdown of ``latest.md``: the rows, the targets as measured, and notes on the runs."""
    rows = document["rows"]
    failures = [f"- {name}: FAILED, no figures: {reason}" for name, reason in document["failed_runs"].items()]
    sections = [
        [
            f"Measured {document['date']} on {document['machine']['summary']}; jobs of "
            f"{job_range(document['options'])}; one run each."
        ],
        main_table(rows),
        sweep_table(rows),
        tradeoff_table(rows),
        ["Issue targets, as measured in this run:", "", *lines] if (lines := target_lines(rows)) else [],
        ["Notes on the runs:", "", *notes] if (notes := failures + run_notes(document["runs"])) else [],
    ]
    return "\n\n".join("\n".join(section) for section in sections if section)


def run_notes(runs: list[dict[str, Any]]) -> list[str]:
    """What may make a run's figures describe something else than the steady cost."""
    notes = []
    for run in runs:
        found = []
        if run["errors"]:
            found.append(f"triggers raised: {'; '.join(run['errors'])}")
        if run["stray_requests"]:
            found.append(f"requests the server could not attribute: {run['stray_requests']}")
        if run["server_cores"] and run["server_cores"] > 0.5:
            found.append(f"the server used {run['server_cores']:.2f} cores: it may have slowed answers")
        if run["other_cores"] > OTHER_CORES_NOTE:
            found.append(f"other processes used {run['other_cores']:.2f} cores meanwhile (shared machine)")
        if run["steal_cores"] > OTHER_CORES_NOTE:
            found.append(f"the hypervisor took {run['steal_cores']:.2f} cores (steal)")
        if run["log_warnings_or_errors"] and "peer" not in run["kinds"]:
            # The peer logs a warning for every 404 poke by design; anywhere else a warning means retries.
            found.append(f"{run['log_warnings_or_errors']} log lines with warnings or errors")
        if found:
            notes.append(f"- {run['name']}: " + "; ".join(found))
    return notes


def job_range(options: dict[str, Any]) -> str:
    low = options["job_duration"] - options["job_spread"] / 2
    high = options["job_duration"] + options["job_spread"] / 2
    return f"{low:g}-{high:g} s ({options['job_duration']:g} s on average)"


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def line_color(run_name: str) -> str:
    """The same row keeps its colour in every plot; the peer is red, the floor grey, ours blue-green."""
    for prefix, color in (
        ("floor", "tab:gray"),
        ("peer-5s-https", "darkred"),
        ("peer", "tab:red"),
        ("ours-eta-https", "navy"),
        ("ours-eta-frozen", "tab:pink"),
        ("ours-eta-local-settings", "tab:brown"),
        ("ours-eta", "tab:blue"),
        ("ours-no-eta", "tab:cyan"),
        ("ours-fixed", "tab:green"),
        ("ours-batch", "tab:olive"),
        ("moonshot", "tab:purple"),
    ):
        if run_name.startswith(prefix):
            return color
    return "black"


def coarser(timeline: list[list[float]], wall: float, lag_bin: float) -> list[tuple[float, float]]:
    """Bins of about a 60th of the run (at least the timeline's own ``lag_bin``), each its worst lag."""
    width = max(lag_bin, round(wall / 60 / lag_bin) * lag_bin)
    bins: dict[float, float] = {}
    for at, lag in timeline:
        key = (at // width) * width
        bins[key] = max(bins.get(key, 0.0), lag)
    return sorted(bins.items())


def save(figure: Figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plain_numbers() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:g}")


def sweep_plot(rows: list[Row], key: str, ylabel: str, path: Path) -> None:
    """One line per series against jobs in flight, on log axes with plain numbers."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    colors = {"floor": "tab:gray", "peer": "tab:red", "ours": "tab:blue"}
    names = {
        "floor": "sleep only (floor)",
        "peer": "HttpSensorTrigger, 5 s",
        "ours": "TaskResultTrigger, eta",
    }
    sweep = sweep_rows(rows)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for series in ("floor", "peer", "ours"):
        points = sorted((r["jobs"], r[key]) for r in sweep if r["series"] == series and r[key] is not None)
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", color=colors[series], label=names[series])
            for x, y in points:
                axes.annotate(f"{y:.3g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xscale("log")
    axes.set_yscale("log")
    # Plain numbers on log axes, and x ticks only where something was measured.
    axes.set_xticks(sorted({r["jobs"] for r in sweep}))
    axes.xaxis.set_major_formatter(plain_numbers())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_major_formatter(plain_numbers())
    axes.yaxis.set_minor_formatter(plain_numbers())
    axes.set_xlabel("jobs in flight (one per trigger, all deferred at once)")
    axes.set_ylabel(ylabel)
    axes.set_title(f"{ylabel} in one triggerer event loop")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    save(figure, path)


def lag_panel(
    axes: Axes, timed: dict[str, Row], selected: list[str], labels: dict[str, str], lag_bin: float
) -> None:
    for name in selected:
        timeline = coarser(timed[name]["timeline"], timed[name]["wall_s"], lag_bin)
        if timeline:
            xs, ys = zip(*timeline, strict=True)
            axes.plot(xs, [max(y, 0.01) for y in ys], linewidth=1, color=line_color(name), label=labels[name])
    axes.axhline(TARGET_LAG_P99_MS, color="black", linestyle="--", linewidth=0.8, label="10 ms")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(plain_numbers())
    axes.set_xlabel("seconds since the burst")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)


def lag_plot(document: dict[str, Any], path: Path) -> None:
    """The worst heartbeat lag over time: plain HTTP main rows, then the HTTPS rows and the moonshot."""
    import matplotlib.pyplot as plt

    timed = {run["name"]: run for run in document["runs"] if run["section"] in ("main", "moonshot")}
    labels = {r["run"]: r["label"] for r in document["rows"]}
    figure, panels = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    panel_runs = (
        [n for n in timed if timed[n]["scheme"] == "http" and timed[n]["section"] == "main"],
        [n for n in timed if timed[n]["scheme"] == "https" or timed[n]["section"] == "moonshot"],
    )
    for axes, selected, title in zip(
        panels, panel_runs, ("HTTP, main rows", "HTTPS rows and the moonshot"), strict=True
    ):
        lag_panel(axes, timed, selected, labels, document["options"]["lag_bin_s"])
        axes.set_title(title)
    panels[0].set_ylabel("worst heartbeat lag in each bin (ms)")
    save(figure, path)


def tradeoff_points(axes: Axes, title: str, selected: list[Row], color: str) -> None:
    xs = [r["delay_p50_s"] for r in selected]
    ys = [r["requests_per_job"] for r in selected]
    spread = [[0] * len(selected), [max(0.0, r["delay_max_s"] - r["delay_p50_s"]) for r in selected]]
    # Points, not a line: the settings are not an ordered series.
    axes.errorbar(xs, ys, xerr=spread, fmt="o", color=color, label=title, capsize=3, alpha=0.85)
    # Points that (nearly) coincide share one label instead of printing over each other.
    tags: dict[tuple[float, float], list[str]] = {}
    for row, x, y in zip(selected, xs, ys, strict=True):
        if row["kind"] == "peer":
            tag = f"{row['poke_interval']:g} s"
        else:
            tag = f"{row['poll_interval']:g}/{row['max_poll_interval']:g}"
        spot = next((k for k in tags if abs(k[0] - x) < 1.5 and abs(k[1] - y) < 0.3), (x, y))
        tags.setdefault(spot, []).append(tag)
    for (x, y), names in tags.items():
        axes.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)


def tradeoff_plot(trade: list[Row], jobs: str, path: Path) -> None:
    """Requests per job against detection delay, one point per setting of the trade-off run."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for title, selected, color in (
        ("TaskResultTrigger, eta", [r for r in trade if r["kind"] == "ours" and r["eta"]], "tab:blue"),
        ("TaskResultTrigger, no eta", [r for r in trade if r["kind"] == "ours" and not r["eta"]], "tab:cyan"),
        ("HttpSensorTrigger, fixed poke", [r for r in trade if r["kind"] == "peer"], "tab:red"),
    ):
        if selected:
            tradeoff_points(axes, title, selected, color)
    axes.set_ylim(bottom=0)
    axes.set_xlim(left=0)
    axes.set_xlabel("detection delay: event after the job's end, p50 (bar to max), s")
    axes.text(
        0.99,
        0.02,
        "labels: poll_interval/max_poll_interval (s), or the peer's poke interval",
        transform=axes.transAxes,
        ha="right",
        fontsize=7,
        color="dimgray",
    )
    axes.set_ylabel("requests per job")
    axes.set_title(f"Requests per job against detection delay; jobs of {jobs}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    save(figure, path)


def plots(document: dict[str, Any], output: Path) -> list[Path]:
    """Draws every plot the document has figures for; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    rows = document["rows"]
    written: list[Path] = []
    if sweep_rows(rows):
        for key, ylabel, filename in (
            ("cpu_per_job_ms", "CPU per job (ms)", "cpu_per_job.png"),
            ("rss_per_job_kb", "RSS per job (KB)", "rss_per_job.png"),
        ):
            sweep_plot(rows, key, ylabel, output / filename)
            written.append(output / filename)
    if any(run["section"] in ("main", "moonshot") for run in document["runs"]):
        lag_plot(document, output / "loop_lag.png")
        written.append(output / "loop_lag.png")
    if trade := [r for r in rows if r["section"] == "tradeoff" and r["delay_p50_s"] is not None]:
        tradeoff_plot(trade, job_range(document["options"]), output / "tradeoff.png")
        written.append(output / "tradeoff.png")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "json", nargs="?", type=Path, default=Path(__file__).resolve().parent / "results" / "latest.json"
    )
    parser.add_argument(
        "--output-dir", type=Path, help="where latest.md and the plots go (default: beside the JSON)"
    )
    args = parser.parse_args()
    document = json.loads(args.json.read_text())
    output: Path = args.output_dir or args.json.parent
    output.mkdir(parents=True, exist_ok=True)
    text = tables(document)
    (output / "latest.md").write_text(text + "\n")
    written = plots(document, output)
    print(text)
    print()
    print(f"wrote {output / 'latest.md'}, " + ", ".join(p.name for p in written))


if __name__ == "__main__":
    main()
