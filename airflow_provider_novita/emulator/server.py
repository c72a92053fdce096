"""Run the emulator in the background of the current process, on a real TCP port.

The listening socket is bound here, before uvicorn starts, and handed over to it: with ``port=0`` the
operating system picks a free port and the emulator owns it from that instant, so there is no window in
which another process could take a port that was merely found to be free.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

import uvicorn

from .app import create_app
from .config import EmulatorConfig
from .service import EmulatorService

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from types import TracebackType

_T = TypeVar("_T")

_STARTUP_TIMEOUT = 30.0
# Bounds stop(): requests still running after this are cancelled (e.g. a client stuck mid-download).
_GRACEFUL_SHUTDOWN_SECONDS = 5
_STOP_TIMEOUT = 30.0


class _InjectedTruncations(logging.Filter):
    """
    Drops uvicorn's error for a response cut short, which the emulator only ever does on purpose (a
    dropped connection, a lost answer, a truncated download) and counts in ``stats()["faults_injected"]``
    and ``downloads_by_output``: a soak injects a hundred of them, and each would print an error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


_UVICORN_ERRORS = logging.getLogger("uvicorn.error")
_QUIET = _InjectedTruncations()


class EmulatorServer:
    """A running emulator: ``start()`` it (or use it as a context manager), point a client at
    ``base_url`` with ``api_key``, inspect ``stats()``, and ``stop()`` it.

    Example::

        with EmulatorServer(EmulatorConfig(job_duration=1.0)) as emulator:
            os.environ["AIRFLOW_CONN_NOVITA_DEFAULT"] = emulator.airflow_conn_json()
            ...
    """

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self._requested_port = port
        self._service = EmulatorService(self.config)
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._port is None:
            raise RuntimeError("the emulator has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        """Root URL to use as the API base URL, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def api_key(self) -> str:
        return self.config.api_key

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EmulatorServer:
        """Bind, start serving in a daemon thread and return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        sock = _bind(self.host, self._requested_port)
        _UVICORN_ERRORS.addFilter(_QUIET)  # a no-op when it is already there
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(self._service),
                lifespan="on",
                log_level="warning",
                # Leave the host process's logging configuration alone (pytest, Airflow, ...).
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
            )
        )
        port = sock.getsockname()[1]
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"novita-emulator-{port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(_STOP_TIMEOUT)
                sock.close()
                raise RuntimeError("the emulator failed to start; see the uvicorn.error log")
            time.sleep(0.01)
        self._uvicorn, self._thread, self._socket, self._port = server, thread, sock, port
        return self

    def stop(self) -> None:
        """Stop serving, finish or cancel running requests, release the pool and the port."""
        server, thread, sock = self._uvicorn, self._thread, self._socket
        if server is None or thread is None or sock is None:
            return
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_STOP_TIMEOUT)
        sock.close()
        self._uvicorn = self._thread = self._socket = None

    def stats(self) -> dict[str, Any]:
        """The counters also served at ``GET /_emulator/stats``."""
        return self._call_on_loop(self._service.stats)

    def tasks(self) -> list[dict[str, Any]]:
        """Every task created so far, in order: ``task_id``, ``image``, ``status``, ``reason``,
        ``submitted_at`` and ``finish_at``: this process's ``time.monotonic()`` when it was created
        and when it turns (or turned) terminal, None while its image work goes on."""
        return self._call_on_loop(self._service.task_summaries)

    def reset(self) -> None:
        """Forget all tasks, results and counters, as ``POST /_emulator/reset`` does (while running)."""
        self._run_on_loop(self._service.reset())

    def airflow_conn_json(self, conn_type: str = "novita") -> str:
        """An Airflow connection in JSON form, e.g. for ``AIRFLOW_CONN_NOVITA_DEFAULT``."""
        return json.dumps({"conn_type": conn_type, "host": self.base_url, "password": self.api_key})

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return f"<EmulatorServer {where} running={self.running}>"

    def _call_on_loop(self, function: Callable[[], _T]) -> _T:
        # The service's state belongs to the server's event loop thread; reading it from here while
        # requests mutate it could catch a dict in the middle of a change.
        loop = self._service.loop
        if loop is None or not self.running:
            return function()

        async def call() -> _T:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(_STOP_TIMEOUT)

    def _run_on_loop(self, coroutine: Coroutine[Any, Any, None]) -> None:
        loop = self._service.loop
        if loop is None or not self.running:
            coroutine.close()
            raise RuntimeError("the emulator is not running")
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(_STOP_TIMEOUT)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _url_host(host: str) -> str:
    """The host part of a URL that reaches ``host``; wildcard binds are reached over loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
