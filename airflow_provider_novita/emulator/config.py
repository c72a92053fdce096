"""Settings of one emulator instance: accounts, limits, timing and fault injection.

Every random behaviour (job durations, injected failures, random 429/5xx answers) is drawn from
generators seeded with ``seed``, so two emulators built from equal configs behave identically for the
same sequence of requests. All faults are off by default: a default emulator is a well-behaved API.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_API_KEY = "emulator-key"


@dataclass(frozen=True)
class EmulatorConfig:
    """Immutable configuration of an emulator; build variants with ``dataclasses.replace``.

    Account and billing:
        api_key: the only key accepted in ``Authorization: Bearer <key>``.
        credit_balance: starting ``credit_balance`` of ``GET /v3/user`` (Novita counts balance x 10000).
        submission_cost: credits taken per accepted submission, so double submissions show up as
            double billing exactly as they would on the real service.

    Source images:
        max_source_bytes: download cap for a source image.
        max_source_pixels: width x height cap, checked from the image header before any decoding.
        fetch_timeout: total seconds allowed to download a source image.
        workers: size of the thread pool that decodes, resizes and encodes.
        cache_results: produce each distinct result (same source bytes, resolution and format) once and
            serve it to every task that asks for it again. Every task still downloads its source and
            is timed as usual; only the decode, resize and encode are shared, so a soak of thousands
            of copies of one sample does not spend this machine's CPU on thousands of equal upscales.
            Off by default: every task upscales, as the service does.

    Timing:
        queue_seconds: how long a task reports ``TASK_STATUS_QUEUED``.
        job_duration: seconds from submission to the earliest completion; a ``(min, max)`` pair draws
            each task's duration uniformly from that range. A task also never completes before its
            image is really produced.
        seed: seeds every random decision.

    Faults (all off by default):
        failure_rate: fraction of accepted tasks that end ``TASK_STATUS_FAILED``.
        rate_limit_rate / rate_limit_first: fraction of ``/v3`` requests, or the first N requests to
            each ``/v3`` endpoint, answered 429 ``RATE_LIMIT_EXCEEDED``.
        retry_after: when set, 429 answers carry ``Retry-After`` with this many seconds.
        retry_after_share: the fraction of 429 answers that carry it (when ``retry_after`` is set),
            drawn per answer: real rate limiters are not consistent about it.
        error_rate / error_first: same two forms for 503 ``SERVICE_UNAVAILABLE``; the first
            ``error_first`` requests after the rate-limited ones fail this way.
        drop_rate: fraction of ``/v3`` requests whose connection is dropped mid-answer before the
            request is handled: nothing is created or billed, and the client cannot know that.
        lost_answer_rate: fraction of accepted submissions whose answer is lost: the task is created
            and billed, then the connection drops mid-answer. Without an idempotency key no client
            can avoid paying twice for these if it submits again; ``stats()`` counts them apart.
        latency: seconds added to every ``/v3`` answer (the event loop keeps serving meanwhile). A
            submission whose client disconnected during that wait creates no task.
        truncate_downloads: the first N downloads of each result announce the full Content-Length,
            send half of the bytes and drop the connection.
        output_ttl: seconds a result URL stays valid after the task completes; afterwards it answers
            403 like an expired S3 presigned link.
        ttl_as_string: send ``image_url_ttl`` as ``"3600"`` instead of ``3600``; both occur in the wild.
    """

    api_key: str = DEFAULT_API_KEY
    credit_balance: int = 1_000_000
    submission_cost: int = 100
    max_source_bytes: int = 20 * 1024 * 1024
    max_source_pixels: int = 40_000_000
    fetch_timeout: float = 20.0
    workers: int = 2
    cache_results: bool = False
    queue_seconds: float = 0.2
    job_duration: float | tuple[float, float] = 3.0
    seed: int = 0
    failure_rate: float = 0.0
    rate_limit_rate: float = 0.0
    rate_limit_first: int = 0
    retry_after: float | None = None
    retry_after_share: float = 1.0
    error_rate: float = 0.0
    error_first: int = 0
    drop_rate: float = 0.0
    lost_answer_rate: float = 0.0
    latency: float = 0.0
    truncate_downloads: int = 0
    output_ttl: float = 3600.0
    ttl_as_string: bool = False

    def __post_init__(self) -> None:
        # Fail at construction rather than with a confusing behaviour halfway through a test run.
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        for name in (
            "failure_rate",
            "rate_limit_rate",
            "retry_after_share",
            "error_rate",
            "drop_rate",
            "lost_answer_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        for name in ("credit_balance", "submission_cost", "rate_limit_first", "error_first"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.truncate_downloads < 0:
            raise ValueError("truncate_downloads must not be negative")
        for name in ("max_source_bytes", "max_source_pixels", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("queue_seconds", "latency"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.fetch_timeout <= 0 or self.output_ttl <= 0:
            raise ValueError("fetch_timeout and output_ttl must be positive")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        low, high = self.job_duration_range
        if low < 0 or high < low:
            raise ValueError(f"job_duration must be >= 0 and (min, max) ordered, got {self.job_duration!r}")

    @property
    def job_duration_range(self) -> tuple[float, float]:
        """``job_duration`` as a ``(min, max)`` pair; a fixed duration is a range of width zero."""
        if isinstance(self.job_duration, (int, float)):
            return (float(self.job_duration), float(self.job_duration))
        low, high = self.job_duration
        return (float(low), float(high))
