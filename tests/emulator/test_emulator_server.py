"""Running the emulator: in-process server, fixtures, command line, and load."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING

import httpx
import pytest

from airflow_provider_novita.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_novita.emulator.__main__ import main, parse_job_duration

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import EmulatorApi

REPO_ROOT = Path(__file__).resolve().parents[2]
# Guards against a hanging subprocess or server, not performance expectations.
PROCESS_LIMIT_SECONDS = 60.0


def test_server_binds_a_free_port_and_releases_it_on_stop() -> None:
    server = EmulatorServer(EmulatorConfig(api_key="secret"))
    with server:
        assert server.running
        assert server.port > 0
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        assert server.api_key == "secret"
        assert json.loads(server.airflow_conn_json()) == {
            "conn_type": "novita",
            "host": server.base_url,
            "password": "secret",
        }
        assert json.loads(server.airflow_conn_json(conn_type="http"))["conn_type"] == "http"
        response = httpx.get(f"{server.base_url}/v3/user", headers={"Authorization": "Bearer secret"})
        assert response.status_code == 200

    assert not server.running
    # Binding the same port again only works once the emulator has really let go of it.
    socket.create_server(("127.0.0.1", server.port)).close()
    assert server.stats()["requests"]["user"] == 1


def test_two_servers_get_different_ports(novita_emulator: EmulatorServer) -> None:
    with EmulatorServer() as other:
        assert other.port != novita_emulator.port


def test_start_twice_is_refused_and_stop_is_idempotent() -> None:
    server = EmulatorServer()
    server.stop()
    with server, pytest.raises(RuntimeError, match="already running"):
        server.start()
    server.stop()


def test_base_url_needs_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="not been started"):
        _ = EmulatorServer().base_url


def test_fixture_server_is_fast_and_running(novita_emulator: EmulatorServer) -> None:
    assert novita_emulator.running
    assert novita_emulator.config.job_duration == 0.5


@pytest.mark.asyncio
async def test_many_concurrent_polls_are_all_answered(api: EmulatorApi) -> None:
    task_ids = [api.submit_ok(resolution="2k") for _ in range(5)]
    headers = {"Authorization": f"Bearer {api.server.api_key}"}
    # Ten clients of 50 requests each: one httpx pool with hundreds of queued requests is slow on the
    # client side, which would measure httpx rather than the emulator.
    clients = [httpx.AsyncClient(base_url=api.base_url, headers=headers, timeout=60) for _ in range(10)]
    try:
        responses = await asyncio.gather(
            *(
                clients[index % len(clients)].get(
                    "/v3/async/task-result", params={"task_id": task_ids[index % len(task_ids)]}
                )
                for index in range(500)
            )
        )
    finally:
        for client in clients:
            await client.aclose()

    assert [response.status_code for response in responses] == [200] * 500
    for index, response in enumerate(responses):
        assert response.json()["task"]["task_id"] == task_ids[index % len(task_ids)]
    for task_id in task_ids:
        assert api.wait(task_id)["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert api.stats()["requests"]["task-result"] >= 500


def test_single_worker_handles_many_self_served_sources(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(workers=1, job_duration=0.0, queue_seconds=0.0)
    samples = ["landscape.png", "portrait.jpg", "square.webp", "transparent.png"] * 2

    task_ids = [api.submit_ok(api.sample_url(name), resolution="2k") for name in samples]

    assert [api.wait(task_id)["task"]["status"] for task_id in task_ids] == ["TASK_STATUS_SUCCEED"] * 8


def test_job_duration_argument_accepts_a_value_or_a_range() -> None:
    assert parse_job_duration("3") == 3.0
    assert parse_job_duration("2:6") == (2.0, 6.0)


@pytest.mark.parametrize(
    "argv", [["--job-duration", "soon"], ["--failure-rate", "2"], ["--job-duration", "6:2"]]
)
def test_cli_refuses_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    assert exit_info.value.code != 0


def test_cli_reports_a_busy_port(novita_emulator: EmulatorServer) -> None:
    with pytest.raises(SystemExit, match="cannot listen"):
        main(["--port", str(novita_emulator.port)])


def read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def wait_for_banner(lines: queue.Queue[str | None]) -> str:
    seen: list[str] = []
    while True:
        line = lines.get(timeout=PROCESS_LIMIT_SECONDS)
        assert line is not None, f"the emulator exited before announcing itself: {''.join(seen)}"
        if "API key" in line:
            return line
        seen.append(line)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_serves_until_signalled(stop_signal: signal.Signals) -> None:
    python_path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    command = [
        sys.executable,
        "-m",
        "airflow_provider_novita.emulator",
        "--port",
        "0",
        "--api-key",
        "cli-key",
        "--job-duration",
        "0.2:0.4",
        "--seed",
        "3",
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(python_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
        match = re.search(r"(http://\S+) with API key (\S+)", wait_for_banner(lines))
        assert match
        base_url, key = match.groups()
        assert key == "cli-key"
        response = httpx.get(f"{base_url}/v3/user", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200

        process.send_signal(stop_signal)

        assert process.wait(timeout=PROCESS_LIMIT_SECONDS) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base_url}/v3/user")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=PROCESS_LIMIT_SECONDS)
        if process.stdout is not None:
            process.stdout.close()
