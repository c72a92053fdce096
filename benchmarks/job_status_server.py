"""
A loopback stand-in for Novita's task-result endpoint, cheap enough to serve a triggerer benchmark.

The provider's emulator really upscales every job, which costs CPU on a 2-core machine that the
measured process needs; this server does no work beyond answering. It is stateless: every task id
says when its job ends and whether an ``eta`` is reported (:func:`make_task_id`), so the benchmark
creates jobs by naming them and nothing is submitted.

Endpoints, on each job listener (plain HTTP, and HTTPS with ``--certfile``/``--keyfile``):

* ``GET /v3/async/task-result?task_id=ID``: Novita's JSON shape. ``TASK_STATUS_PROCESSING`` with
  ``eta`` = the whole seconds left, rounded up, so never early (0 when the id says "no eta", which is
  what Novita sends when it has none), then ``TASK_STATUS_SUCCEED`` with one image. An id that does
  not parse answers 404 ``TASK_NOT_FOUND``.
* ``GET /peer/ID``: for ``HttpSensorTrigger`` (apache-airflow-providers-http 6.3.0), which treats a
  404 as "not yet" (it sleeps ``poke_interval`` and pokes again) and any 2xx as done. So: 404 until
  the job's end, then 200. It would retry any other error at once, without sleeping, so a malformed
  id answers 200 (and is counted as ``peer:bad-id``) rather than turning the peer into a busy loop.

A separate plain-HTTP control listener serves ``GET /stats`` (``?reset=1`` zeroes the counters after
reading them): per listener the TCP connections accepted, open now and most open at once; per group
(the task id's first part) the requests per endpoint and answer. The control listener's own
connections are not counted.

On start the server prints one JSON line with its ports. It stops on SIGTERM, SIGINT or when its
stdin closes, so that a harness that dies cannot leave it running.

Run: ``python benchmarks/job_status_server.py [--certfile C --keyfile K]``; the harness
(``triggerer_polling.py``) starts it itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import json
import math
import resource
import signal
import ssl
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote

TASK_RESULT_PATH = b"/v3/async/task-result"
PEER_PREFIX = b"/peer/"
STATS_PATH = b"/stats"
# The peers open a connection per poll, all at the same moment: the default backlog (100) would drop
# SYNs and delay their connects by a retransmission (1 s), which is not what they cost.
BACKLOG = 65535
MAX_HEAD = 16 * 1024


def make_task_id(group: str, end: float, eta: bool, index: int) -> str:
    """A task id naming its job: ``group``, end (epoch seconds, kept to the ms), whether eta is reported."""
    return f"{group}-{round(end * 1000)}-{'e' if eta else 'n'}-{index}"


def parse_task_id(task_id: str) -> tuple[str, float, bool] | None:
    """The group, end time and eta flag of a :func:`make_task_id` id, or None for any other string."""
    parts = task_id.rsplit("-", 3)
    if len(parts) != 4 or not parts[0] or parts[2] not in ("e", "n") or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]) / 1000, parts[2] == "e"


def raise_open_files_limit() -> None:
    """
    Open-file limit up to the hard limit: a peer that opens a connection per poll holds one socket per
    trigger at once (10,000 in the sweep) on both ends, past a common soft limit of 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        # Best effort: where it cannot be raised, a saturated peer shows as triggers that raised.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def write_self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """
    A certificate for ``127.0.0.1`` (and ``host``, a name) and its key, written to ``directory``;
    returns (cert, key) paths. The provider's proxy tests use it too.

    Self-signed, so the cert is its own trust anchor: a client trusts it by taking the cert file as
    its CA bundle. ECDSA P-256, the common choice of public APIs today; valid for one day.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                + ([x509.DNSName(host)] if host != "127.0.0.1" else [])
            ),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server-cert.pem", directory / "server-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass
class ListenerStats:
    accepted: int = 0
    open: int = 0
    max_open: int = 0


@dataclass
class Stats:
    listeners: dict[str, ListenerStats] = field(default_factory=dict)
    requests: dict[str, Counter[str]] = field(default_factory=dict)

    def count(self, group: str, what: str) -> None:
        counter = self.requests.get(group)
        if counter is None:
            counter = self.requests[group] = Counter()
        counter[what] += 1

    def to_json(self) -> dict[str, object]:
        return {
            "listeners": {name: vars(listener).copy() for name, listener in self.listeners.items()},
            "requests": {group: dict(counter) for group, counter in self.requests.items()},
        }

    def reset(self) -> None:
        # Connections still open stay counted as open; the most open restarts from them.
        for listener in self.listeners.values():
            listener.accepted = 0
            listener.max_open = listener.open
        self.requests.clear()


def _response(status: bytes, body: bytes, *, close: bool = False) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + (b"\r\nConnection: close" if close else b"")
        + b"\r\n\r\n"
        + body
    )


NOT_FOUND = _response(
    b"404 Not Found",
    json.dumps(
        {"code": 404, "reason": "TASK_NOT_FOUND", "message": "task not found", "metadata": {}}
    ).encode(),
)
PEER_PENDING = _response(b"404 Not Found", b'{"status":"running"}')
PEER_DONE = _response(b"200 OK", b'{"status":"done"}')


class JobStatus:
    """What the job listeners answer; pure functions of the request and the clock."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.image_base = "http://127.0.0.1"

    def respond(self, target: bytes) -> bytes:
        path, _, query = target.partition(b"?")
        if path == TASK_RESULT_PATH:
            values = parse_qs(query.decode("latin-1")).get("task_id")
            return self.task_result(values[0] if values else "")
        if path.startswith(PEER_PREFIX):
            return self.peer(unquote(path[len(PEER_PREFIX) :].decode("latin-1")))
        self.stats.count("-", "unknown-path")
        return NOT_FOUND

    def task_result(self, task_id: str) -> bytes:
        parsed = parse_task_id(task_id)
        if parsed is None:
            self.stats.count("-", "task-result:bad-id")
            return NOT_FOUND
        group, end, eta = parsed
        left = end - time.time()
        task: dict[str, object] = {"task_id": task_id, "task_type": "UPSCALE", "reason": ""}
        images: list[dict[str, object]] = []
        if left > 0:
            self.stats.count(group, "task-result:processing")
            task.update(
                status="TASK_STATUS_PROCESSING", eta=math.ceil(left) if eta else 0, progress_percent=0
            )
        else:
            self.stats.count(group, "task-result:succeed")
            task.update(status="TASK_STATUS_SUCCEED", eta=0, progress_percent=100)
            images.append(
                {
                    "image_url": f"{self.image_base}/results/{task_id}.jpeg",
                    "image_url_ttl": 3600,
                    "image_type": "jpeg",
                    "nsfw_detection_result": None,
                }
            )
        body = {
            "extra": {"seed": "0", "enable_nsfw_detection": False},
            "task": task,
            "images": images,
            "videos": [],
            "audios": [],
        }
        return _response(b"200 OK", json.dumps(body, separators=(",", ":")).encode())

    def peer(self, task_id: str) -> bytes:
        parsed = parse_task_id(task_id)
        if parsed is None:
            self.stats.count("-", "peer:bad-id")
            return PEER_DONE
        group, end, _ = parsed
        if time.time() < end:
            self.stats.count(group, "peer:pending")
            return PEER_PENDING
        self.stats.count(group, "peer:done")
        return PEER_DONE


class HttpConnection(asyncio.Protocol):
    """
    Minimal HTTP/1.1 with keep-alive: requests are a head and, if Content-Length says so, a body
    (ignored). Enough for httpx and aiohttp GETs; nothing here is meant for anything else.
    """

    def __init__(self, handler: JobStatus | Control, listener: ListenerStats | None) -> None:
        self.handler = handler
        self.listener = listener
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.listener is not None:
            self.listener.accepted += 1
            self.listener.open += 1
            self.listener.max_open = max(self.listener.max_open, self.listener.open)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.listener is not None:
            self.listener.open -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buffer) < end + 4 + length:
                return
            request_line = bytes(self.buffer[: self.buffer.find(b"\r\n")])
            del self.buffer[: end + 4 + length]
            parts = request_line.split(b" ")
            if len(parts) != 3:
                self.transport.write(_response(b"400 Bad Request", b"{}", close=True))
                self.transport.close()
                return
            self.transport.write(self.handler.respond(parts[1]))
            if b"\r\nconnection: close" in head:
                self.transport.close()


class Control:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def respond(self, target: bytes) -> bytes:
        path, _, query = target.partition(b"?")
        if path != STATS_PATH:
            return NOT_FOUND
        body = json.dumps(self.stats.to_json()).encode()
        if parse_qs(query.decode("latin-1")).get("reset") == ["1"]:
            self.stats.reset()
        return _response(b"200 OK", body)


async def serve(http_port: int, https_port: int, control_port: int, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    jobs = JobStatus(stats)
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)

    def watch_stdin() -> None:
        # EOF on stdin: the harness is gone (or done), whatever way it ended.
        sys.stdin.read()
        loop.call_soon_threadsafe(stopped.set)

    threading.Thread(target=watch_stdin, daemon=True).start()

    async def listen(name: str, port: int, context: ssl.SSLContext | None) -> asyncio.Server:
        stats.listeners[name] = listener = ListenerStats()
        return await loop.create_server(
            lambda: HttpConnection(jobs, listener), "127.0.0.1", port, ssl=context, backlog=BACKLOG
        )

    servers = {"http": await listen("http", http_port, None)}
    if tls is not None:
        servers["https"] = await listen("https", https_port, tls)
    control = await loop.create_server(
        lambda: HttpConnection(Control(stats), None), "127.0.0.1", control_port
    )
    ports = {name: server.sockets[0].getsockname()[1] for name, server in servers.items()}
    ports["control"] = control.sockets[0].getsockname()[1]
    jobs.image_base = f"http://127.0.0.1:{ports['http']}"
    print(json.dumps(ports), flush=True)
    try:
        await stopped.wait()
    finally:
        for server in [*servers.values(), control]:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Prints {'http': port, 'https': port, 'control': port} as one JSON line once listening.",
    )
    parser.add_argument("--http-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--https-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--control-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--certfile", type=Path, help="PEM certificate: serve HTTPS too")
    parser.add_argument("--keyfile", type=Path, help="PEM key of --certfile")
    args = parser.parse_args()
    raise_open_files_limit()
    tls = None
    if args.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.certfile, args.keyfile)
    # uvloop, when installed (uvicorn's extras bring it), makes the server cheaper, which leaves more
    # of the machine to the measured process; the server's speed is not what is measured.
    server = serve(args.http_port, args.https_port, args.control_port, tls)
    try:
        import uvloop
    except ImportError:
        asyncio.run(server)
    else:
        uvloop.run(server)


if __name__ == "__main__":
    main()
