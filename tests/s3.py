"""
A real S3 API for tests: moto's standalone server on a free loopback port, and an Airflow AWS
connection pointing at it, so that ``s3://aws_default@bucket/...`` goes through Airflow's object storage,
the Amazon provider and s3fs exactly as in production.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import pytest
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


_buckets = itertools.count()


@dataclass
class S3Bucket:
    """One empty bucket of the test's own on the moto server, and a boto3 client to look inside it."""

    name: str
    endpoint: str
    client: Any

    def uri(self, key: str, conn_id: str | None = "aws_default") -> str:
        return f"s3://{conn_id + '@' if conn_id else ''}{self.name}/{key}"

    def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        self.client.put_object(Bucket=self.name, Key=key, Body=body, ContentType=content_type)
        return self.uri(key)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, key: str) -> tuple[bytes, str]:
        """An object's bytes and its content type."""
        answer = self.client.get_object(Bucket=self.name, Key=key)
        return answer["Body"].read(), answer["ContentType"]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server, for the whole test session; stopped at its end whatever happened."""
    # The server runs in this process: its access log (which shows the signed URLs the emulator
    # fetched, as S3's own access log would) must not mix with the Airflow output that tests inspect.
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        access_log.setLevel(level)


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A fresh bucket, and ``aws_default`` pointing at the moto server (as users point it at MinIO)."""
    # Airflow's object storage keeps one filesystem per protocol and connection id for the life of the
    # process (a task's process, in production); a test's must not outlive it into the next test.
    monkeypatch.setattr("airflow.sdk.io.store._STORE_CACHE", {})
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing-key-id",
                "password": "testing-secret-key",
                "extra": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
            }
        ),
    )
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing-key-id",
        aws_secret_access_key="testing-secret-key",
    )
    name = f"novita-test-{next(_buckets)}"
    client.create_bucket(Bucket=name)
    return S3Bucket(name, moto_endpoint, client)


# --- counting the requests the server answered ----------------------------------------------------

REQUEST_KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE", "POST")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LISTING_QUERY = {"list-type", "prefix", "delimiter"}


@dataclass(frozen=True)
class S3Request:
    """One request moto's server answered, from its access log."""

    method: str
    path: str  # decoded, without the query: "/bucket/key", "/bucket", "/"
    query: dict[str, list[str]]
    status: str

    @property
    def kind(self) -> str:
        """PUT, GET (an object's bytes), HEAD, LIST (a bucket's or the buckets' listing), DELETE, POST."""
        on_a_bucket = self.path.strip("/").count("/") == 0
        if (
            self.method == "GET"
            and on_a_bucket
            and (self.path.strip("/") == "" or _LISTING_QUERY & set(self.query))
        ):
            return "LIST"
        return self.method

    @property
    def key(self) -> str:
        """The object key the request is about ("" for a bucket)."""
        return self.path.lstrip("/").partition("/")[2]


@dataclass
class S3Requests:
    """The requests counted so far, in the order the server answered them."""

    requests: list[S3Request] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many requests of each kind: every kind of :data:`REQUEST_KINDS`, others as they came."""
        counted = Counter(request.kind for request in self.requests)
        return {kind: counted.pop(kind, 0) for kind in REQUEST_KINDS} | dict(counted)

    def of(self, kind: str) -> Sequence[S3Request]:
        return [request for request in self.requests if request.kind == kind]


class _AccessLog(logging.Handler):
    def __init__(self, into: S3Requests) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        # werkzeug logs '"%s" %s %s' % (request line, status, size), the line in ANSI colours for a
        # status other than 200.
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) != 3:
            return
        line, status = _ANSI.sub("", str(args[0])), str(args[1])
        method, _, rest = line.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        parts = urlsplit(target)
        self.into.requests.append(
            S3Request(method, unquote(parts.path), parse_qs(parts.query, keep_blank_values=True), status)
        )


@contextlib.contextmanager
def counting_requests() -> Iterator[S3Requests]:
    """
    Counts the requests the in-process moto server answers inside the block (every bucket's), from
    werkzeug's access log, which :func:`moto_endpoint` otherwise keeps quiet. Each request is logged
    before its response is sent, so a request the block waited for is counted when the block ends.
    """
    counted = S3Requests()
    handler = _AccessLog(counted)
    access_log = logging.getLogger("werkzeug")
    level, propagate = access_log.level, access_log.propagate
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False  # not into the test's captured logs
    try:
        yield counted
    finally:
        access_log.removeHandler(handler)
        access_log.setLevel(level)
        access_log.propagate = propagate
