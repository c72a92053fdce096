"""
What importing the provider's operator adds to parsing a DAG file, over ``import airflow.sdk``.

Every DAG file that uses ``UpscaleOperator`` imports
``airflow_provider_novita.operators.upscale``, and the dag-processor (and every task process) pays
for that import on each fresh parse. The target (issue 9): at most 20 ms over ``import airflow.sdk``,
with the emulator, Pillow and object storage kept out of that import path.

How:

* every measurement is a fresh interpreter (``python -c``), as a freshly forked parse process is:
  a module imported once is cached in ``sys.modules``, so timing a second import in one process
  measures nothing. Two kinds of child run, interleaved (and alternating which goes first) so that
  drift in the machine's load hits both alike:

  - ``sdk``: times ``import airflow.sdk``;
  - ``provider``: times ``import airflow.sdk``, then, in the same process, times
    ``import airflow_provider_novita.operators.upscale`` and lists the modules it added to
    ``sys.modules``.

* one child of each kind runs first and is discarded: it compiles the ``.pyc`` files and warms the
  page cache, which a deployed Airflow has done long before (and the first ``import airflow.sdk`` in
  a new ``AIRFLOW_HOME`` writes its configuration file);
* ``PYTHONDONTWRITEBYTECODE`` is not passed on, so that the first child can write those ``.pyc``
  files;
* the children share one temporary ``AIRFLOW_HOME`` and inherit no other ``AIRFLOW*`` variable, so
  neither this machine's Airflow set-up nor its DAGs play a part;
* ``python -X importtime`` then runs the provider child once more; the entries printed after
  ``airflow.sdk`` finished are the provider's, and the 15 with the largest cumulative time are listed.

Figures:

* ``difference of medians``: median of the ``provider`` children's total (both imports) minus the
  median of the ``sdk`` children: what a DAG file pays for the provider, measured across processes;
* ``in-process increment``: the provider import timed alone, right after ``import airflow.sdk`` in
  the same process: the same thing measured directly, with less noise. Compare it with the target;
* modules: everything the provider import loads that ``import airflow.sdk`` did not, grouped by
  top-level package, with any module of a package that must stay out of the parse path flagged
  (Pillow, the emulator, fsspec/universal_pathlib, the emulator's web stack, tenacity). A package in
  that list that ``import airflow.sdk`` already loaded is reported as such: it costs the provider
  nothing.

How to read them: the machine is noisy and shared; the median and p90 over ``--runs`` fresh processes
(15 by default) are what to compare, and a difference of a few ms between two runs of this script is
noise. ``-X importtime`` is a single run and adds its own overhead: use it to see where the time
goes, not how much there is.

Run: ``python benchmarks/import_cost.py [--runs 15] [--output import_cost.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROVIDER_MODULE = "airflow_provider_novita.operators.upscale"
TARGET_MS = 20.0
IMPORTTIME_TOP = 15
# Packages that must not be imported when a DAG file imports the operator: heavy, optional, or only
# needed at run time (the emulator and its web stack, Pillow, object storage, a retry library).
FORBIDDEN = (
    "PIL",
    "airflow_provider_novita.emulator",
    "fsspec",
    "upath",
    "uvicorn",
    "fastapi",
    "starlette",
    "tenacity",
)
CHILD_TIMEOUT = 120.0

# Each child prints one JSON line. perf_counter brackets the import statements only, so interpreter
# start-up and shutdown (the same in both kinds of child) stay out of the figures.
SDK_CHILD = """
import json, time
started = time.perf_counter()
import airflow.sdk
print(json.dumps({"sdk": time.perf_counter() - started}))
"""

PROVIDER_CHILD = f"""
import json, sys, time
started = time.perf_counter()
import airflow.sdk
sdk_done = time.perf_counter()
before = set(sys.modules)
import {PROVIDER_MODULE}
done = time.perf_counter()
print(json.dumps({{
    "sdk": sdk_done - started,
    "provider": done - sdk_done,
    "total": done - started,
    "new_modules": sorted(set(sys.modules) - before),
    "loaded_by_sdk": sorted(before),
}}))
"""


def child_env(airflow_home: Path) -> dict[str, str]:
    # Nothing from the caller's Airflow configuration may change what gets imported.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "_AIRFLOW"))}
    # The warm-up child must be able to write the .pyc files that an installed wheel ships with: a
    # machine that sets PYTHONDONTWRITEBYTECODE would otherwise have every child compile the
    # provider's source again (about 18 ms here), which no deployment pays.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["AIRFLOW_HOME"] = str(airflow_home)
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    return env


def run_child(code: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    # subprocess.run waits for the child; on timeout it kills it before raising, so none is left.
    result = subprocess.run(
        [sys.executable, *flags, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"an import child failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result


def child_figures(code: str, env: dict[str, str]) -> dict[str, Any]:
    # Airflow may log to stdout while importing; the figures are on the last line.
    lines = run_child(code, env).stdout.strip().splitlines()
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: with 15 runs, p90 is the 14th smallest value."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [value * 1000 for value in seconds]
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": percentile(ms, 0.9),
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


def importtime_entries(stderr: str) -> list[dict[str, Any]]:
    """Entries of ``-X importtime`` from ``airflow.sdk``'s end to the provider module's: its imports.

    A line reads ``import time: <self us> | <cumulative us> | <indent><module>``; it is printed when
    a module finishes, nested imports first, two spaces of indent per level of nesting.
    """
    entries = []
    after_sdk = False
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|", 2)
        module = name.strip()
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        if not after_sdk:
            after_sdk = module == "airflow.sdk" and depth == 0
            continue
        if depth == 0 and module != PROVIDER_MODULE:
            # A top-level entry other than the provider's came after it (the child's own imports).
            break
        entries.append(
            {
                "module": module,
                "depth": depth,
                "self_ms": int(self_us) / 1000,
                "cumulative_ms": int(cumulative_us) / 1000,
            }
        )
    return entries


def measure(runs: int) -> dict[str, Any]:
    airflow_home = Path(tempfile.mkdtemp(prefix="novita-import-cost-"))
    try:
        env = child_env(airflow_home)
        # Warm-up, discarded: .pyc files, page cache, airflow.cfg in the fresh AIRFLOW_HOME.
        child_figures(SDK_CHILD, env)
        child_figures(PROVIDER_CHILD, env)
        sdk_alone: list[float] = []
        provider_runs: list[dict[str, Any]] = []
        for run in range(runs):
            # Alternate the order, so neither kind always runs right after the other.
            if run % 2:
                provider_runs.append(child_figures(PROVIDER_CHILD, env))
                sdk_alone.append(child_figures(SDK_CHILD, env)["sdk"])
            else:
                sdk_alone.append(child_figures(SDK_CHILD, env)["sdk"])
                provider_runs.append(child_figures(PROVIDER_CHILD, env))
            print(f"  run {run + 1}/{runs} done", file=sys.stderr, flush=True)
        importtime = run_child(PROVIDER_CHILD, env, "-X", "importtime").stderr
    finally:
        shutil.rmtree(airflow_home, ignore_errors=True)

    # The module lists are the same in every run; the last one stands for all.
    new_modules: list[str] = provider_runs[-1]["new_modules"]
    loaded_by_sdk = set(provider_runs[-1]["loaded_by_sdk"])
    by_package: dict[str, int] = {}
    for module in new_modules:
        top = module.split(".")[0]
        by_package[top] = by_package.get(top, 0) + 1

    def is_forbidden(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    flagged = {prefix: [m for m in new_modules if is_forbidden(m, prefix)] for prefix in FORBIDDEN}
    already = {prefix: any(is_forbidden(m, prefix) for m in loaded_by_sdk) for prefix in FORBIDDEN}
    sdk_stats = summary(sdk_alone)
    total_stats = summary([run["total"] for run in provider_runs])
    entries = importtime_entries(importtime)
    return {
        "runs": runs,
        "python": sys.version.split()[0],
        "sdk_alone": sdk_stats,
        "sdk_in_provider_children": summary([run["sdk"] for run in provider_runs]),
        "sdk_plus_provider": total_stats,
        "difference_of_medians_ms": total_stats["median_ms"] - sdk_stats["median_ms"],
        "in_process_increment": summary([run["provider"] for run in provider_runs]),
        "target_ms": TARGET_MS,
        "new_modules": new_modules,
        "new_modules_by_package": dict(sorted(by_package.items(), key=lambda item: -item[1])),
        "forbidden_new_modules": {prefix: mods for prefix, mods in flagged.items() if mods},
        "forbidden_already_loaded_by_sdk": [prefix for prefix, loaded in already.items() if loaded],
        "importtime_top": sorted(entries, key=lambda e: -e["cumulative_ms"])[:IMPORTTIME_TOP],
        "importtime_provider_total_ms": next(
            (e["cumulative_ms"] for e in entries if e["module"] == PROVIDER_MODULE and e["depth"] == 0), None
        ),
    }


def report(result: dict[str, Any]) -> None:
    def row(label: str, stats: dict[str, float]) -> str:
        return (
            f"| {label} | {stats['median_ms']:.1f} | {stats['p90_ms']:.1f} | "
            f"{stats['min_ms']:.1f} | {stats['max_ms']:.1f} |"
        )

    increment = result["in_process_increment"]
    verdict = "within" if increment["median_ms"] <= result["target_ms"] else "OVER"
    print(f"\nImport cost, {result['runs']} fresh processes each (Python {result['python']}), ms:\n")
    print("| measurement | median | p90 | min | max |")
    print("|---|---|---|---|---|")
    print(row("`import airflow.sdk` alone", result["sdk_alone"]))
    print(row("`import airflow.sdk` + provider (total)", result["sdk_plus_provider"]))
    print(row("`import airflow.sdk` within those same children", result["sdk_in_provider_children"]))
    print(f"| difference of medians | {result['difference_of_medians_ms']:.1f} | - | - | - |")
    print(row(f"provider import after airflow.sdk, in-process (target <= {TARGET_MS:g})", increment))
    print(f"\nIn-process increment: median {increment['median_ms']:.1f} ms, {verdict} the target.")

    print(f"\nModules the provider import adds ({len(result['new_modules'])}):\n")
    print("| package | modules |")
    print("|---|---|")
    for package, count in result["new_modules_by_package"].items():
        print(f"| {package} | {count} |")
    outside = [m for m in result["new_modules"] if not m.startswith("airflow_provider_novita")]
    print(f"\nOutside the provider's own package: {', '.join(outside) or 'none'}.")
    forbidden = result["forbidden_new_modules"]
    if forbidden:
        print("\nFLAGGED, pulled in by the provider import:")
        for prefix, modules in forbidden.items():
            print(f"- {prefix}: {', '.join(modules)}")
    else:
        print(f"\nNone of {', '.join(FORBIDDEN)} is pulled in by the provider import.")
    if result["forbidden_already_loaded_by_sdk"]:
        already = ", ".join(result["forbidden_already_loaded_by_sdk"])
        print(f"(Already loaded by `import airflow.sdk`: {already}.)")

    total = result["importtime_provider_total_ms"]
    total_text = f"{total:.1f} ms" if total is not None else "not found"
    print(
        f"\n`-X importtime`, one run: the {IMPORTTIME_TOP} largest cumulative entries after airflow.sdk "
        f"(the provider module in all: {total_text}):\n"
    )
    print("| module | depth | cumulative ms | self ms |")
    print("|---|---|---|---|")
    for entry in result["importtime_top"]:
        cumulative, own = entry["cumulative_ms"], entry["self_ms"]
        print(f"| `{entry['module']}` | {entry['depth']} | {cumulative:.1f} | {own:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per kind (default 15)")
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    result = measure(args.runs)
    report(result)
    if args.output:
        # The full list of modules already loaded by airflow.sdk would swamp the file; it is not kept.
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
