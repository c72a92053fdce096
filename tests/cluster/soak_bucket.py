"""
The chaos soak's S3 bucket (``--s3``): moto's server in the soak's process, and what it was asked.

The cluster's workers write ``output_path`` there through the Amazon provider and s3fs, as in
production, and the soak counts the requests the server answered, by kind, per image. moto keeps
every object in memory: the soak's images (2k JPEGs of one sample, a few hundred KB each) keep a
1,000-image run within a few hundred MB.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from moto.server import ThreadedMotoServer

from tests.s3 import counting_requests

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.s3 import S3Requests

BUCKET = "novita-soak"
KEY_ID, SECRET = "soak-key-id", "soak-secret-key"
# What a first run should cost at most, per image, in uploads and probes (PUT, GET, HEAD, LIST).
PUTS_AND_PROBES = ("PUT", "GET", "HEAD", "LIST")


@dataclass
class SoakBucket:
    endpoint: str
    client: Any
    conn_id: str = "aws_soak"

    def uri(self, key: str) -> str:
        return f"s3://{self.conn_id}@{BUCKET}/{key}"

    def key_of(self, uri: str) -> str:
        return uri.removeprefix(f"s3://{self.conn_id}@{BUCKET}/")

    def airflow_conn_json(self) -> str:
        return json.dumps(
            {
                "conn_type": "aws",
                "login": KEY_ID,
                "password": SECRET,
                "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            }
        )

    def keys(self) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    @contextlib.contextmanager
    def counting(self) -> Iterator[CountedRequests]:
        with counting_requests() as requests:
            yield CountedRequests(requests)


@dataclass
class CountedRequests:
    requests: S3Requests

    def figures(self, images: int) -> dict[str, Any]:
        counts = self.requests.counts()
        return {
            "requests_by_kind": counts,
            "requests_per_image_by_kind": {kind: round(n / images, 3) for kind, n in counts.items()},
            "puts_and_probes_per_image": round(sum(counts.get(k, 0) for k in PUTS_AND_PROBES) / images, 3),
        }


@contextlib.contextmanager
def soak_bucket() -> Iterator[SoakBucket]:
    """moto's S3 server on a free loopback port with the soak's bucket; stopped whatever happens."""
    # Its access log is read while the run is counted (counting_requests), and kept quiet otherwise.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
        )
        client.create_bucket(Bucket=BUCKET)
        yield SoakBucket(endpoint, client)
    finally:
        server.stop()
