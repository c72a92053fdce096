"""
What saving and finding results costs in object storage requests, counted on a real S3 API (moto's
server, through Airflow's object storage, the Amazon provider and s3fs).

A store bills, throttles and slows down per request: a batch of 100 images must cost about one upload
each and one listing in all, never a probe (HEAD, exists, stat) per image, and a re-run that finds
every file must upload nothing. Run with ``-s`` to see the counts.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
from PIL import Image

from airflow_provider_novita.models import ResultImage, TaskResult, TaskStatus
from airflow_provider_novita.storage import Destination, existing_results, persist_results
from tests.s3 import counting_requests

if TYPE_CHECKING:
    from tests.s3 import S3Bucket, S3Requests

IMAGES = 100
# s3fs lists up to 1,000 keys per request.
LISTING_PAGE = 1000


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = small_png()


def serving_png() -> httpx.MockTransport:
    """Every result URL answers the same small, valid PNG, as a network would: streamed, with its length."""
    return httpx.MockTransport(
        lambda request: httpx.Response(
            200, headers={"Content-Length": str(len(PNG))}, stream=httpx.ByteStream(PNG)
        )
    )


def batch(s3: S3Bucket) -> tuple[list[TaskResult], list[Destination]]:
    results = [
        TaskResult(
            f"task-{index}",
            TaskStatus.SUCCEED,
            images=(ResultImage(f"https://cdn.test/out/{index}.png?X-Amz-Signature=s", "png", 3600),),
        )
        for index in range(IMAGES)
    ]
    destinations = [Destination(s3.uri(f"in/photo-{index}.png"), "2k", index) for index in range(IMAGES)]
    return results, destinations


def key(uri: str) -> str:
    """The object key of an ``s3://conn@bucket/key`` URI."""
    return urlsplit(uri).path.lstrip("/")


def report(title: str, counted: S3Requests) -> dict[str, int]:
    counts = counted.counts()
    per_image = ", ".join(f"{kind} {count / IMAGES:.2f}" for kind, count in counts.items())
    print(f"\n{title}: {counts} for {IMAGES} images; per image: {per_image}")
    return counts


def test_a_batch_costs_one_upload_per_image_and_a_rerun_one_listing_and_two_ranged_reads_each(
    s3: S3Bucket,
) -> None:
    results, destinations = batch(s3)
    output = s3.uri("upscaled/2026-01-01/")

    # First run: nothing there yet, every result downloaded and saved.
    with counting_requests() as first:
        assert existing_results(output, "png", destinations, -1) == {}
        paths = persist_results(results, destinations, output, map_index=-1, transport=serving_png())
    counts = report("first run", first)

    expected_keys = sorted(key(path) for path in paths)
    assert len(set(expected_keys)) == IMAGES
    assert counts["PUT"] == IMAGES, "one upload per image"
    # Each upload goes straight to the final name: no partial object, no copy of one.
    assert sorted(request.key for request in first.of("PUT")) == expected_keys
    assert counts["GET"] == 0, "nothing is read back"
    assert counts["HEAD"] == 0, "no probe per image"
    assert counts["DELETE"] == 0, "nothing to clean up"
    assert counts["POST"] == 0, "no multipart upload for a small image"
    # One listing of the folder; s3fs lists its parent as well when the folder is empty, to tell a
    # missing folder from a file of that name.
    assert 1 <= counts["LIST"] <= 2
    assert sum(counts.values()) == counts["PUT"] + counts["LIST"], counts
    probes = counts["GET"] + counts["HEAD"] + counts["LIST"]
    assert (counts["PUT"] + probes) / IMAGES <= 1.2

    assert s3.keys("upscaled/") == expected_keys
    body, content_type = s3.get(expected_keys[0])
    assert (body, content_type) == (PNG, "image/png")

    # Re-run: every file is there and found; nothing is downloaded or uploaded.
    with counting_requests() as rerun:
        found = existing_results(output, "png", destinations, -1)
    counts = report("re-run", rerun)

    assert found == dict(enumerate(paths))
    assert counts["LIST"] == math.ceil(IMAGES / LISTING_PAGE), "one listing, whatever the batch's size"
    assert counts["GET"] == 2 * IMAGES, "a ranged read of each file's head and one of its tail"
    assert Counter(request.key for request in rerun.of("GET")) == dict.fromkeys(expected_keys, 2)
    assert counts["HEAD"] == 0, "no probe per image: the listing gave the sizes"
    assert counts["PUT"] == counts["DELETE"] == counts["POST"] == 0
    assert sum(counts.values()) == counts["LIST"] + counts["GET"], counts
