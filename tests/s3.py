"""
A real S3 API for tests: moto's standalone server on a free loopback port, and an Airflow AWS
connection pointing at it, so that ``s3://aws_default@bucket/...`` goes through Airflow's object storage,
the Amazon provider and s3fs exactly as in production.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from collections.abc import Iterator


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
