"""Sources in object storage: refused before anything is paid for, else signed by the storage."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.io import attach
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_novita.exceptions import NovitaStorageError
from airflow_provider_novita.sources import SourceSigner, as_sources
from tests.s3 import S3Bucket

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def signed_for(url: str) -> float:
    """Seconds for which a pre-signed S3 URL is valid (signature version 2 or 4), or 0 if it is not one."""
    query = parse_qs(urlsplit(url).query)
    if "X-Amz-Signature" in query:
        return float(query["X-Amz-Expires"][0])
    if "Signature" in query:
        return float(query["Expires"][0]) - time.time()
    return 0.0


def test_object_storage_paths_become_their_uris_with_the_connection() -> None:
    path = ObjectStoragePath("s3://aws_default@bucket/a.png")
    assert as_sources(path) == "s3://aws_default@bucket/a.png"
    assert as_sources([path, "https://x.test/b.png"]) == [
        "s3://aws_default@bucket/a.png",
        "https://x.test/b.png",
    ]
    assert as_sources("s3://bucket/a.png") == "s3://bucket/a.png"


def test_an_http_url_passes_unchanged_and_unchecked() -> None:
    signer = SourceSigner(60)
    signer.prepare([("https://x.test/a.png?sig=1", True)])
    assert signer.url("https://x.test/a.png?sig=1") == "https://x.test/a.png?sig=1"


def test_a_storage_uri_is_signed_for_the_expiry_and_the_url_fetches_the_object(s3: S3Bucket) -> None:
    source = s3.put("in/a.png", PNG)
    signer = SourceSigner(1234)
    signer.prepare([(source, True)])
    url = signer.url(source)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == s3.endpoint
    assert parts.path == f"/{s3.name}/in/a.png"
    assert signed_for(url) == pytest.approx(1234, abs=5)
    assert httpx.get(url).content == PNG


def test_each_signing_is_fresh_but_names_the_same_object(s3: S3Bucket) -> None:
    source = s3.put("a.png", PNG)
    first, second = SourceSigner(60), SourceSigner(61)
    first.prepare([(source, True)])
    second.prepare([(source, True)])
    assert first.url(source) != second.url(source)
    assert urlsplit(first.url(source)).path == urlsplit(second.url(source)).path


def test_a_missing_object_is_refused_naming_the_image_with_its_connection(s3: S3Bucket) -> None:
    s3.put("there.png", PNG)
    missing = s3.uri("missing.png")
    with pytest.raises(ValueError, match="does not exist") as info:
        SourceSigner(60).prepare([(s3.uri("there.png"), True), (missing, True)])
    assert str(info.value) == (
        f"image 's3://aws_default@{s3.name}/missing.png' cannot be submitted: its object does not exist "
        "(checked before submitting: Novita bills a failed fetch)"
    )


def test_a_store_that_does_not_answer_may_on_a_retry(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a mistake in the DAG: raised as a NovitaStorageError, which Airflow's retries apply to."""
    signer = SourceSigner(60)

    def unreachable(self: object) -> bool:
        raise ConnectionError("Could not connect to the endpoint URL")

    monkeypatch.setattr(ObjectStoragePath, "exists", unreachable)
    with pytest.raises(NovitaStorageError) as info:
        signer.prepare([(s3.uri("a.png"), True)])
    assert str(info.value) == (
        f"image 's3://aws_default@{s3.name}/a.png': whether its object exists could not be checked: "
        "ConnectionError: Could not connect to the endpoint URL"
    )


def test_an_object_that_an_earlier_try_submitted_need_not_exist_any_more(s3: S3Bucket) -> None:
    missing = s3.uri("gone.png")
    signer = SourceSigner(60)
    signer.prepare([(missing, False)])
    assert signed_for(signer.url(missing)) > 0


def test_a_connection_that_does_not_exist_is_refused_by_name(s3: S3Bucket) -> None:
    with pytest.raises(ValueError, match="its Airflow connection 'no_such_conn' does not exist"):
        SourceSigner(60).prepare([(s3.uri("a.png", conn_id="no_such_conn"), True)])


def test_a_filesystem_that_cannot_sign_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("airflow.sdk.io.store._STORE_CACHE", {})
    attach(protocol="memory", fs=MemoryFileSystem())
    with pytest.raises(ValueError, match=r"its filesystem \(MemoryFileSystem\) cannot sign URLs"):
        SourceSigner(60).prepare([("memory://bucket/a.png", True)])


def test_a_scheme_no_filesystem_handles_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"image 'nosuchfs://bucket/a.png' cannot be submitted: no object storage filesystem handles "
        r"nosuchfs:// here .*; install the Airflow provider for it",
    ):
        SourceSigner(60).prepare([("nosuchfs://bucket/a.png", True)])
