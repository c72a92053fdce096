"""
Peak memory of persisting one 8k result to object storage, against the size of the file.

``output_path`` promises to stream: an 8k result is never held whole in memory. This measures it.
The emulator runs in a separate process (its memory is not counted) and produces a real 8k image
from seeded noise that this script serves on loopback (noise, so that the PNG does not compress
away: a smooth sample gives an 8k file of a few MiB). The script then calls
:func:`airflow_provider_novita.storage.persist_results`, exactly what the operator runs in the
worker, writing to a temporary ``file://`` folder, and reports:

* the file size;
* the peak of Python allocations during the download (``tracemalloc``): what streaming bounds.
  It should stay near the chunk size (1 MiB), whatever the size of the file;
* the growth of the process's peak RSS during the download (``ru_maxrss``), which also includes
  allocator and library overhead.

One small result is persisted first, so one-off costs (imports, the shared SSL context) are not
counted. Run: ``python benchmarks/persist_memory.py [--resolution 8k] [--format png]``.
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from airflow_provider_novita.models import TaskResult
from airflow_provider_novita.storage import CHUNK_SIZE, Destination, persist_results

MiB = 1024 * 1024
HEADERS = {"Authorization": "Bearer emulator-key"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit("the emulator exited")
        try:
            httpx.get(f"{base_url}/samples/", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    sys.exit("the emulator did not start")


def serve_noise(width: int, height: int) -> ThreadingHTTPServer:
    """An HTTP server on loopback whose every path answers the same seeded-noise PNG."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), random.Random(0).randbytes(width * height * 3)).save(
        buffer, "PNG"
    )
    body = buffer.getvalue()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def upscale(base_url: str, source: str, resolution: str, output_format: str) -> TaskResult:
    """Submit one job to the emulator and wait for its result, parsed as the provider parses it."""
    body = {"image": source, "resolution": resolution, "output_format": output_format}
    task_id = httpx.post(f"{base_url}/v3/async/image-upscaler", json=body, headers=HEADERS).json()["task_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        params = {"task_id": task_id}
        result = httpx.get(f"{base_url}/v3/async/task-result", params=params, headers=HEADERS).json()
        if result["task"]["status"] == "TASK_STATUS_SUCCEED":
            return TaskResult.from_api(result, task_id)
        if result["task"]["status"] == "TASK_STATUS_FAILED":
            sys.exit(f"the emulator failed the job: {result['task']['reason']}")
        time.sleep(0.5)
    sys.exit("the job did not finish within 300 s")


def persist(result: TaskResult, folder: str) -> Path:
    persist_results(
        [result],
        [Destination(None, None, 0)],
        f"file://{folder}",
        map_index=-1,
    )
    (written,) = Path(folder).iterdir()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", default="8k", choices=["2k", "4k", "8k"])
    parser.add_argument("--format", default="png", choices=["jpeg", "png", "webp"])
    args = parser.parse_args()

    port = free_port()
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_novita.emulator",
            "--port",
            str(port),
            "--job-duration",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    noise = serve_noise(1024, 576)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_up(base_url, emulator)
        source = f"http://127.0.0.1:{noise.server_port}/noise.png"
        print(f"Upscaling 1024x576 noise to {args.resolution} {args.format} in the emulator ...", flush=True)
        warm_up = upscale(base_url, source, "2k", args.format)
        result = upscale(base_url, source, args.resolution, args.format)
        with tempfile.TemporaryDirectory() as warm_folder, tempfile.TemporaryDirectory() as folder:
            persist(warm_up, warm_folder)
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            tracemalloc.start()
            started = time.perf_counter()
            written = persist(result, folder)
            elapsed = time.perf_counter() - started
            _, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
            size = written.stat().st_size
            with Image.open(written) as image:
                pixels = f"{image.width}x{image.height}"
        print(f"result file              {size / MiB:8.1f} MiB  ({pixels} {args.format})")
        print(f"download + write time    {elapsed:8.2f} s")
        print(f"chunk size               {CHUNK_SIZE / MiB:8.1f} MiB")
        print(
            f"peak Python allocations  {traced_peak / MiB:8.1f} MiB  ({traced_peak / size:.1%} of the file)"
        )
        print(f"peak RSS growth          {rss_growth / MiB:8.1f} MiB  (over the earlier peak of the process)")
    finally:
        noise.shutdown()
        emulator.send_signal(signal.SIGTERM)
        try:
            emulator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            emulator.kill()


if __name__ == "__main__":
    main()
