"""
A small HTTP forward proxy for tests, run as its own process on a loopback port.

It speaks the two ways a client uses a forward proxy: an absolute-form request (``GET
http://host:port/path``) for plain http, forwarded with ``Connection: close``, and ``CONNECT
host:port`` for https, after which it only pipes bytes, so TLS stays end to end. It resolves only the
host names it was given (``--host novita.test=127.0.0.1``) and IP literals: a request that should have
gone through it but did not fails to resolve instead of passing unnoticed. With ``--auth user:pass``
it answers 407 to any request without those Basic credentials.

Every request it receives is appended to ``--log`` as a JSON line ``{"method", "target",
"authorized"}``, so that tests can tell what went through it. It prints its port on stdout once it
listens, and runs until it is terminated.

``ForwardProxy`` starts and stops such a process for a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

# Request headers that concern this hop only and are not forwarded.
_HOP_BY_HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}


class _Proxy:
    def __init__(self, hosts: Mapping[str, str], auth: str | None, log: IO[str]) -> None:
        self.hosts = hosts
        self.expected = "Basic " + base64.b64encode(auth.encode()).decode() if auth else None
        self.log = log

    def resolve(self, host: str) -> str | None:
        try:
            ipaddress.ip_address(host.strip("[]"))
            return host.strip("[]")
        except ValueError:
            return self.hosts.get(host.lower())

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
        authorization = next(
            (v.strip() for k, v in headers if k.strip().lower() == "proxy-authorization"), ""
        )
        authorized = self.expected is None or authorization == self.expected
        self.log.write(json.dumps({"method": method, "target": target, "authorized": authorized}) + "\n")
        self.log.flush()
        if not authorized:
            await _answer(
                writer, b"407 Proxy Authentication Required", b'Proxy-Authenticate: Basic realm="t"\r\n'
            )
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = await self.open(host, int(port), writer)
            if upstream is None:
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await pipe_both(reader, writer, *upstream)
            return
        await self.forward(reader, writer, method, target, version, headers)

    async def forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        target: str,
        version: str,
        headers: list[list[str]],
    ) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            await _answer(writer, b"400 Bad Request")
            return
        upstream = await self.open(parts.hostname, parts.port or 80, writer)
        if upstream is None:
            return
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kept = [f"{k}:{v}" for k, v in headers if k.strip().lower() not in _HOP_BY_HOP]
        head = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        upstream[1].write(head.encode("latin-1"))
        await pipe_both(reader, writer, *upstream)

    async def open(
        self, host: str, port: int, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        address = self.resolve(host)
        if address is None:
            await _answer(writer, b"502 Bad Gateway")
            return None
        try:
            return await asyncio.open_connection(address, port)
        except OSError:
            await _answer(writer, b"502 Bad Gateway")
            return None


async def _answer(writer: asyncio.StreamWriter, status: bytes, extra: bytes = b"") -> None:
    writer.write(b"HTTP/1.1 " + status + b"\r\n" + extra + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            target.write(chunk)
            await target.drain()
    except ConnectionError:
        pass
    finally:
        target.close()


async def _serve(proxy: _Proxy) -> None:
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", action="append", default=[], help="NAME=ADDRESS this proxy resolves")
    parser.add_argument("--auth", help="USER:PASSWORD the proxy requires")
    parser.add_argument("--log", required=True, help="file to append one JSON line per request to")
    args = parser.parse_args()
    hosts = dict(item.lower().split("=", 1) for item in args.host)
    with open(args.log, "a", encoding="utf-8") as log:
        asyncio.run(_serve(_Proxy(hosts, args.auth, log)))


class ForwardProxy:
    """
    A proxy process for one test: ``with ForwardProxy(tmp_path, hosts={...}) as proxy:``.

    ``proxy.url`` is its URL (with the credentials, when it requires some), ``proxy.requests()`` what it
    has received so far. The process is stopped when the block ends, whatever happened inside it.
    """

    def __init__(self, folder: Path, *, hosts: Mapping[str, str], auth: str | None = None) -> None:
        self.log = folder / f"proxy-{os.getpid()}-{id(self)}.jsonl"
        self.hosts = hosts
        self.auth = auth
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        credentials = f"{self.auth}@" if self.auth else ""
        return f"http://{credentials}127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def __enter__(self) -> ForwardProxy:
        command = [sys.executable, "-m", "tests.forward_proxy", "--log", str(self.log)]
        command += [arg for name, address in self.hosts.items() for arg in ("--host", f"{name}={address}")]
        if self.auth:
            command += ["--auth", self.auth]
        root = Path(__file__).resolve().parent.parent
        self._process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
        try:
            assert self._process.stdout is not None
            self.port = int(self._process.stdout.readline())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()


if __name__ == "__main__":
    main()
