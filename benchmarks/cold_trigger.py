"""
How long a TaskResultTrigger's first run in a fresh process stalls the event loop, beside a second run.

A triggerer restarted with a thousand deferred triggers starts every one of them in a process that has
done nothing yet, so whatever the first run does synchronously (imports, a connection lookup's set-up)
stalls all the others. Each measurement is a fresh child process that starts the emulator, submits one
job over plain HTTP (so that nothing of the provider or of Airflow's connection machinery has run), then
runs the trigger to its event twice beside a 10 ms heartbeat, recording the worst lag of each run and
the modules imported on the loop's thread during the first. The connection comes from an
``AIRFLOW_CONN_`` variable: a real triggerer looks it up through its supervisor instead, so this
process imports what the fallback path needs, close to but not exactly what a triggerer imports.

Usage: ``python benchmarks/cold_trigger.py [--runs 5]``, in the environment of the Airflow version to
measure (``make benchmark-cold`` runs it in every tested one). It prints the figures, not a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HEARTBEAT = 0.01


def measure_once() -> dict[str, object]:
    """In this (fresh) process: the worst loop lag of a first and a second trigger run, and the imports."""
    import airflow
    import httpx

    from airflow_provider_novita.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig(api_key="sk-cold", job_duration=0.2)) as emulator:
        os.environ["AIRFLOW_CONN_NOVITA_DEFAULT"] = emulator.airflow_conn_json()
        body = {"image": f"{emulator.base_url}/samples/landscape.png", "resolution": "2k"}
        answer = httpx.post(
            f"{emulator.base_url}/v3/async/image-upscaler",
            json=body,
            headers={"Authorization": "Bearer sk-cold"},
        )
        task_id = answer.json()["task_id"]
        from airflow_provider_novita.triggers.task_result import TaskResultTrigger

        loop_thread, imported, recording = threading.get_ident(), [], [False]

        def audit(event: str, args: tuple[object, ...]) -> None:
            if recording[0] and event == "import" and threading.get_ident() == loop_thread:
                imported.append(str(args[0]))

        sys.addaudithook(audit)
        lags: list[float] = []

        async def main() -> None:
            worst, stop = [0.0], [False]

            async def heartbeat() -> None:
                last = time.perf_counter()
                while not stop[0]:
                    await asyncio.sleep(HEARTBEAT)
                    now = time.perf_counter()
                    worst[0], last = max(worst[0], now - last - HEARTBEAT), now

            beating = asyncio.create_task(heartbeat())
            await asyncio.sleep(0.05)
            for first in (True, False):
                recording[0], worst[0] = first, 0.0
                trigger = TaskResultTrigger([task_id], "novita_default", 0.2, time.time() + 60)
                async for _event in trigger.run():
                    break
                lags.append(worst[0])
            stop[0] = True
            await beating

        asyncio.run(main())
    return {
        "airflow": airflow.__version__,
        "first_ms": lags[0] * 1000,
        "second_ms": lags[1] * 1000,
        "imports": sorted(set(imported)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="fresh processes to measure")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_once()))
        return
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    results = []
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, __file__, "--child"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = [r["first_ms"] for r in results]
    second = [r["second_ms"] for r in results]
    print(
        f"Airflow {results[0]['airflow']}, {args.runs} fresh processes: worst loop lag of the first run "
        f"median {statistics.median(first):.1f} ms (max {max(first):.1f}), of the second run "
        f"median {statistics.median(second):.1f} ms (max {max(second):.1f})"
    )
    print("imported on the loop's thread during the first run:", ", ".join(results[0]["imports"]))


if __name__ == "__main__":
    main()
