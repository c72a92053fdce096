"""The emulated service behind the HTTP layer: billing, tasks, image jobs, results and counters.

Threading model: everything here runs on the server's event loop thread, which is the only thread that
touches the stores and counters, so none of them needs a lock. Image jobs download asynchronously on the
loop (a source served by this very emulator is just another concurrent request) and hand the CPU-bound
decode/resize/encode to a bounded thread pool, so polls stay fast while images are being produced.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from .errors import BILLING_BALANCE_NOT_ENOUGH, ApiError
from .faults import FaultInjector
from .imaging import OUTPUT_CONTENT_TYPES, SourceImageError, fetch_source, upscale
from .outputs import Download, OutputStore
from .samples import Sample, build_samples
from .tasks import INJECTED_FAILURE_REASON, SUCCEED, Task, TaskStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .config import EmulatorConfig

log = logging.getLogger(__name__)

SUBMIT_ENDPOINT = "image-upscaler"
RESULT_ENDPOINT = "task-result"
USER_ENDPOINT = "user"
OUTPUTS_ENDPOINT = "outputs"
COUNTED_ENDPOINTS = (SUBMIT_ENDPOINT, RESULT_ENDPOINT, USER_ENDPOINT, OUTPUTS_ENDPOINT)

TASK_TYPE = "UPSCALE"
INTERNAL_FAILURE_REASON = "TASK_FAILED: internal emulator error while upscaling"

# Loopback sources (the emulator's own samples, local test servers) must never go through a proxy
# configured in the environment for the outside world.
_NO_PROXY_MOUNTS: dict[str, httpx.AsyncBaseTransport | None] = {
    "all://127.0.0.1": None,
    "all://localhost": None,
    "all://[::1]": None,
}


class EmulatorService:
    """One emulated Novita account: its balance, tasks, results, injected faults and request counters."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.samples: Mapping[str, Sample] = build_samples()
        self.faults = FaultInjector(config)
        self._tasks = TaskStore(config, clock)
        self._outputs = OutputStore(config, clock)
        self._jobs: set[asyncio.Task[None]] = set()
        # With config.cache_results: (source digest, resolution, format) -> the upscale making it,
        # shared from the start, so that tasks submitted together wait for one upscale, not one each.
        self._results: dict[tuple[bytes, str, str], asyncio.Future[bytes]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._http: httpx.AsyncClient | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.credit_balance = self.config.credit_balance
        self._requests: Counter[str] = Counter(dict.fromkeys(COUNTED_ENDPOINTS, 0))
        self._accepted_submissions = 0
        self._submissions_by_image: Counter[str] = Counter()
        self._lost_answers_by_image: Counter[str] = Counter()
        self._dropped_connections = 0
        self._abandoned_submissions = 0

    async def start(self) -> None:
        """Acquire the worker pool and the download client; called once the event loop runs."""
        self.loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="novita-emulator")
        self._http = httpx.AsyncClient(
            follow_redirects=True,
            timeout=self.config.fetch_timeout,
            headers={"User-Agent": "novita-emulator"},
            mounts=_NO_PROXY_MOUNTS,
        )

    async def close(self) -> None:
        await self._cancel_jobs()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._pool is not None:
            # Waits for at most the images being encoded right now; queued ones are dropped.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.loop = None

    async def reset(self) -> None:
        """Forget every task, result and counter, and restart all seeded sequences from the seed."""
        await self._cancel_jobs()
        self._tasks.reset()
        self._outputs.reset()
        self._results.clear()
        self.faults.reset()
        self._reset_counters()

    async def _cancel_jobs(self) -> None:
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    def count_request(self, endpoint: str) -> None:
        self._requests[endpoint] += 1

    def count_dropped_connection(self) -> None:
        self._dropped_connections += 1

    def count_abandoned_submission(self) -> None:
        self._abandoned_submissions += 1

    def count_lost_answer(self, image: str) -> None:
        self._lost_answers_by_image[image] += 1

    def submit(self, image: str, resolution: str, output_format: str) -> str:
        """Bill and create a task, and start its image job; returns the task id."""
        if self._http is None or self._pool is None:
            raise RuntimeError("the emulator service is not started")
        if self.credit_balance < self.config.submission_cost:
            raise ApiError(400, BILLING_BALANCE_NOT_ENOUGH, "credit balance is not enough")
        task = self._tasks.create(image, resolution, output_format)
        self.credit_balance -= self.config.submission_cost
        self._accepted_submissions += 1
        self._submissions_by_image[image] += 1
        self._outputs.drop_expired()
        job = asyncio.get_running_loop().create_task(self._run_job(task, self._http, self._pool))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return task.task_id

    async def _run_job(self, task: Task, http: httpx.AsyncClient, pool: ThreadPoolExecutor) -> None:
        if task.injected_failure:
            self._tasks.finish(task, failure_reason=INJECTED_FAILURE_REASON)
            return
        config = self.config
        try:
            source = await fetch_source(http, task.image, config.max_source_bytes, config.fetch_timeout)
            content = await self._produce(source, task, pool)
        except SourceImageError as exc:
            self._tasks.finish(task, failure_reason=exc.reason)
            return
        except Exception:
            # A bug here must still end the task like a real backend would, not leave it running forever.
            log.exception("Upscaling task %s failed unexpectedly", task.task_id)
            self._tasks.finish(task, failure_reason=INTERNAL_FAILURE_REASON)
            return
        name = f"{task.task_id}.{task.output_format}"
        available_at = self._tasks.finish(task, output_name=name)
        self._outputs.put(name, content, OUTPUT_CONTENT_TYPES[task.output_format], available_at)

    async def _produce(self, source: bytes, task: Task, pool: ThreadPoolExecutor) -> bytes:
        produced = asyncio.get_running_loop().run_in_executor
        args = (source, task.resolution, task.output_format, self.config.max_source_pixels)
        if not self.config.cache_results:
            return await produced(pool, upscale, *args)
        key = (hashlib.sha256(source).digest(), task.resolution, task.output_format)
        if key not in self._results:
            self._results[key] = produced(pool, upscale, *args)
        # Shielded: a cancelled job must not cancel the upscale that other tasks are waiting for.
        return await asyncio.shield(self._results[key])

    def result(self, task_id: str, base_url: str) -> dict[str, Any] | None:
        """The documented task-result body, or None for an unknown task id."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        view = self._tasks.view(task)
        images: list[dict[str, Any]] = []
        if view.status == SUCCEED and view.output_name is not None:
            ttl = math.ceil(self.config.output_ttl)
            images.append(
                {
                    "image_url": f"{base_url.rstrip('/')}/outputs/{view.output_name}",
                    "image_url_ttl": str(ttl) if self.config.ttl_as_string else ttl,
                    "image_type": task.output_format,
                    "nsfw_detection_result": None,
                }
            )
        return {
            "extra": {
                "seed": task.seed,
                "enable_nsfw_detection": False,
                "debug_info": {
                    "request_info": "",
                    "submit_time_ms": str(task.submitted_ms),
                    "execute_time_ms": view.execute_time_ms,
                    "complete_time_ms": view.complete_time_ms,
                },
            },
            "task": {
                "task_id": task.task_id,
                "task_type": TASK_TYPE,
                "status": view.status,
                "reason": view.reason,
                "eta": view.eta,
                "progress_percent": view.progress_percent,
            },
            "images": images,
            "videos": [],
            "audios": [],
        }

    def user(self) -> dict[str, Any]:
        return {"allow_features": [SUBMIT_ENDPOINT], "credit_balance": self.credit_balance, "free_trial": {}}

    def download(self, name: str) -> Download:
        return self._outputs.download(name)

    def task_summaries(self) -> list[dict[str, Any]]:
        return [
            {
                "task_id": task.task_id,
                "image": task.image,
                "status": view.status,
                "reason": view.reason,
                "submitted_at": task.submitted_at,
                "finish_at": task.finish_at,
            }
            for task in self._tasks.all()
            for view in (self._tasks.view(task),)
        ]

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self._requests),
            "accepted_submissions": self._accepted_submissions,
            "submissions_by_image": dict(self._submissions_by_image),
            # Created and billed, answer lost (lost_answer_rate): each one a task the client never saw.
            "lost_answers_by_image": dict(self._lost_answers_by_image),
            "dropped_connections": self._dropped_connections,
            "abandoned_submissions": self._abandoned_submissions,
            "downloads_by_output": self._outputs.downloads_by_output(),
            "tasks_by_status": self._tasks.count_by_status(),
            "faults_injected": dict(self.faults.injected),
        }
