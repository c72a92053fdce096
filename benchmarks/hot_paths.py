"""
Micro-benchmarks of the provider's hot paths, each beside the floor it cannot go below: seconds to run.

What a waiting job costs a triggerer is mostly its polls (``triggerer_polling.py`` measures that
end to end, in 30 minutes). These take the pieces apart, in one process, with no network:

* ``one poll``: ``NovitaSession.get_task_result`` (admission, request slots, retry bookkeeping,
  strict parsing of the answer) beside a bare ``httpx.AsyncClient.get`` plus ``response.json()``
  through the same ``httpx.MockTransport``: the floor of any httpx-based poll. The transport
  answers "processing, eta 5 s" without any I/O, so the figures are the clients' own CPU;
* ``one answer parse``: ``TaskResult.from_api`` of a finished task's JSON, beside ``json.loads``
  of the same body;
* ``one event round trip``: a batch of 10 results to a trigger event and back
  (``BatchOutcome.to_event`` then ``from_event``, the worker's validation), beside a JSON round trip
  of the same payload (what Airflow does to store it);
* ``one polling round``: a new ``BatchPoller`` of 100 tasks (each task's first delay drawn)
  recording 100 answers and choosing the next wait, beside building the dict of 100 answers it is
  handed. Its progress line is left out (the provider's loggers at WARNING): what that costs is the
  logging handler's, which the deployment chooses.

Each figure is the best of ``--repeat`` runs of ``--number`` calls (CPU time per call,
``time.process_time``): the least noise, which is what a comparison of two versions of the code
needs. Compare ours with its floor in the same run, not across machines.

Run: ``python benchmarks/hot_paths.py [--number 2000] [--repeat 5] [--output hot_paths.json]``
(about 10 seconds; in ``.venv`` or ``.venv-bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

BASE_URL = "https://api.novita.test"
API_KEY = "sk-hot-paths"
PROCESSING: dict[str, Any] = {
    "extra": {"debug_info": {"complete_time_ms": ""}},
    "task": {
        "task_id": "t-1",
        "task_type": "UPSCALE",
        "status": "TASK_STATUS_PROCESSING",
        "reason": "",
        "eta": 5,
        "progress_percent": 40,
    },
    "images": [],
    "videos": [],
    "audios": [],
}
SUCCEEDED: dict[str, Any] = {
    **PROCESSING,
    "extra": {"debug_info": {"complete_time_ms": "12345"}},
    "task": {**PROCESSING["task"], "status": "TASK_STATUS_SUCCEED", "eta": 0, "progress_percent": 100},
    "images": [{"image_url": "https://cdn.test/t-1.jpeg", "image_url_ttl": "3600", "image_type": "jpeg"}],
}


def best_of(repeat: int, number: int, call: Callable[[], object]) -> float:
    """The least CPU microseconds per call over ``repeat`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        began = time.process_time()
        for _ in range(number):
            call()
        best = min(best, time.process_time() - began)
    return best / number * 1e6


async def abest_of(repeat: int, number: int, call: Callable[[], Awaitable[object]]) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.process_time()
        for _ in range(number):
            await call()
        best = min(best, time.process_time() - began)
    return best / number * 1e6


async def poll_figures(repeat: int, number: int) -> tuple[float, float]:
    from airflow_provider_novita.hooks.novita import NovitaHook

    body = json.dumps(PROCESSING).encode()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    async with NovitaHook("novita_default", transport=transport).session() as session:
        ours = await abest_of(repeat, number, lambda: session.get_task_result("t-1"))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=BASE_URL, transport=transport, headers=headers) as client:

        async def bare() -> object:
            response = await client.get("/v3/async/task-result", params={"task_id": "t-1"})
            return response.json()

        floor = await abest_of(repeat, number, bare)
    return ours, floor


def parse_figures(repeat: int, number: int) -> tuple[float, float]:
    from airflow_provider_novita.models import TaskResult

    body = json.dumps(SUCCEEDED)
    ours = best_of(repeat, number, lambda: TaskResult.from_api(json.loads(body), "t-1"))
    return ours, best_of(repeat, number, lambda: json.loads(body))


def event_figures(repeat: int, number: int) -> tuple[float, float]:
    from airflow_provider_novita.events import BatchOutcome, OutcomeStatus
    from airflow_provider_novita.models import TaskResult

    ids = [f"t-{i}" for i in range(10)]
    results = [
        TaskResult.from_api({**SUCCEEDED, "task": {**SUCCEEDED["task"], "task_id": i}}, i) for i in ids
    ]
    outcome = BatchOutcome(OutcomeStatus.SUCCESS, ids, results, "10 of 10 succeeded")
    event = outcome.to_event()
    ours = best_of(repeat, number, lambda: BatchOutcome.from_event(outcome.to_event()))
    return ours, best_of(repeat, number, lambda: json.loads(json.dumps(event)))


def round_figures(repeat: int, number: int) -> tuple[float, float]:
    from airflow_provider_novita.models import TaskResult
    from airflow_provider_novita.polling import BatchPoller, PollingPolicy

    ids = [f"t-{i}" for i in range(100)]
    answers = [
        TaskResult.from_api({**PROCESSING, "task": {**PROCESSING["task"], "task_id": i}}, i) for i in ids
    ]
    policy, rng = PollingPolicy(2.0, 30.0), random.Random(20261202)

    def one_round() -> float:
        poller = BatchPoller(ids, policy, time.time() + 3600, rng=rng)
        now = time.time() + 10
        poller.record(poller.due(now), answers, now)
        return poller.next_delay(now)

    ours = best_of(repeat, number, one_round)
    return ours, best_of(repeat, number, lambda: dict(zip(ids, answers, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=2000, help="calls per run (2000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best counts (5)")
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    # Importing Airflow writes its config into AIRFLOW_HOME: never the user's.
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="novita-hot-paths-")
    os.environ["AIRFLOW_CONN_NOVITA_DEFAULT"] = json.dumps(
        {"conn_type": "novita", "host": BASE_URL, "password": API_KEY}
    )
    logging.getLogger("airflow_provider_novita").setLevel(logging.WARNING)
    # A round polls 100 tasks and a parse is cheap: fewer calls keep each figure to about a second.
    figures: dict[str, tuple[float, float]] = {
        "one poll (ours / bare httpx get + json)": asyncio.run(poll_figures(args.repeat, args.number)),
        "one answer parse (TaskResult.from_api / json.loads)": parse_figures(args.repeat, args.number * 5),
        "one event round trip, 10 results (BatchOutcome / json)": event_figures(args.repeat, args.number),
        "one polling round, 100 tasks (BatchPoller / dict of answers)": round_figures(
            args.repeat, max(1, args.number // 10)
        ),
    }
    print(f"best of {args.repeat} runs, CPU per call\n")
    print("| hot path | ours | floor | ours - floor | ratio |\n|---|---|---|---|---|")
    for name, (ours, floor) in figures.items():
        print(f"| {name} | {ours:.1f} µs | {floor:.1f} µs | {ours - floor:.1f} µs | {ours / floor:.2f}x |")
    if args.output:
        rows: dict[str, Any] = {name: {"ours_us": o, "floor_us": f} for name, (o, f) in figures.items()}
        args.output.write_text(
            json.dumps({"number": args.number, "repeat": args.repeat, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
