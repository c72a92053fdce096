"""Command line: run the emulator in the foreground until SIGINT (Ctrl+C) or SIGTERM.

    python -m airflow_provider_novita.emulator --port 8765 --job-duration 2:6 --failure-rate 0.1
    novita-emulator --port 0        # any free port; the chosen URL is printed

Prints exactly one line on startup, with the base URL and the API key to use.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import TYPE_CHECKING

from .config import DEFAULT_API_KEY, EmulatorConfig
from .server import EmulatorServer

if TYPE_CHECKING:
    from types import FrameType


class _StopRequested(Exception):
    """Raised by the SIGINT/SIGTERM handler to leave the main thread's wait."""


def parse_job_duration(text: str) -> float | tuple[float, float]:
    """``"3"`` is a fixed duration, ``"2:6"`` a uniform (min, max) range."""
    low, separator, high = text.partition(":")
    try:
        return (float(low), float(high)) if separator else float(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or MIN:MAX, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    defaults = EmulatorConfig()
    parser = argparse.ArgumentParser(
        prog="novita-emulator",
        description="Local emulator of Novita AI's image-upscaler API that really upscales images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on")
    add("--port", type=int, default=8765, help="port to listen on; 0 picks a free one")
    add("--api-key", default=DEFAULT_API_KEY, help="the only accepted bearer key")
    add("--seed", type=int, default=defaults.seed, help="seed of every random decision")
    add("--job-duration", type=parse_job_duration, default=defaults.job_duration, help="SECONDS or MIN:MAX")
    add("--queue-seconds", type=float, default=defaults.queue_seconds, help="time spent QUEUED")
    add("--credit-balance", type=int, default=defaults.credit_balance, help="starting credit balance")
    add("--submission-cost", type=int, default=defaults.submission_cost, help="credits per submission")
    add("--failure-rate", type=float, default=0.0, help="fraction of tasks that end FAILED")
    add("--rate-limit-rate", type=float, default=0.0, help="fraction of /v3 requests answered 429")
    add("--rate-limit-first", type=int, default=0, help="first N requests per /v3 endpoint answered 429")
    add("--retry-after", type=float, default=None, help="Retry-After seconds sent with 429")
    add("--error-rate", type=float, default=0.0, help="fraction of /v3 requests answered 503")
    add("--error-first", type=int, default=0, help="N requests per /v3 endpoint answered 503 after the 429s")
    add("--latency", type=float, default=0.0, help="seconds added to every /v3 response")
    add("--truncate-downloads", type=int, default=0, help="first N downloads of each result are cut short")
    add("--output-ttl", type=float, default=defaults.output_ttl, help="seconds a result URL stays valid")
    add("--ttl-as-string", action="store_true", help='send image_url_ttl as "3600" instead of 3600')
    add("--max-source-bytes", type=int, default=defaults.max_source_bytes, help="source download cap")
    add("--max-source-pixels", type=int, default=defaults.max_source_pixels, help="source pixel cap")
    add("--fetch-timeout", type=float, default=defaults.fetch_timeout, help="source download time limit")
    add("--workers", type=int, default=defaults.workers, help="threads decoding/resizing/encoding")
    add("--cache-results", action="store_true", help="upscale each distinct source once and share the result")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = EmulatorConfig(
            api_key=args.api_key,
            seed=args.seed,
            job_duration=args.job_duration,
            queue_seconds=args.queue_seconds,
            credit_balance=args.credit_balance,
            submission_cost=args.submission_cost,
            failure_rate=args.failure_rate,
            rate_limit_rate=args.rate_limit_rate,
            rate_limit_first=args.rate_limit_first,
            retry_after=args.retry_after,
            error_rate=args.error_rate,
            error_first=args.error_first,
            latency=args.latency,
            truncate_downloads=args.truncate_downloads,
            output_ttl=args.output_ttl,
            ttl_as_string=args.ttl_as_string,
            max_source_bytes=args.max_source_bytes,
            max_source_pixels=args.max_source_pixels,
            fetch_timeout=args.fetch_timeout,
            workers=args.workers,
            cache_results=args.cache_results,
        )
    except ValueError as exc:
        raise SystemExit(f"novita-emulator: {exc}") from None

    server = EmulatorServer(config, host=args.host, port=args.port)
    try:
        server.start()
    except OSError as exc:
        raise SystemExit(f"novita-emulator: cannot listen on {args.host}:{args.port}: {exc}") from None

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        raise _StopRequested

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        print(f"Novita emulator running at {server.base_url} with API key {server.api_key}", flush=True)
        # Sleeps until a signal handler raises.
        threading.Event().wait()
    except _StopRequested:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
