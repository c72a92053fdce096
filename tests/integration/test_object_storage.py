"""
Sources and results in a real S3 API (moto's server), through Airflow's object storage, the Amazon
provider and s3fs, with the emulator fetching the signed sources over loopback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from airflow_provider_novita.exceptions import NovitaError
from airflow_provider_novita.models import ResultImage, TaskResult, TaskStatus
from airflow_provider_novita.storage import Destination, persist_results
from tests.integration.conftest import task_states, xcom
from tests.integration.test_example_dags import check_image
from tests.test_sources import signed_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_novita.emulator import EmulatorServer
    from tests.s3 import S3Bucket

SAMPLES = ("landscape.png", "portrait.jpg", "square.webp")


def upload_samples(emu: EmulatorServer, s3: S3Bucket, prefix: str) -> list[str]:
    uris = []
    for name in SAMPLES:
        response = httpx.get(f"{emu.base_url}/samples/{name}")
        uris.append(s3.put(f"{prefix}{name}", response.content, response.headers["content-type"]))
    return uris


def stored_by_airflow(airflow_home: Path, printed: str) -> str:
    """
    Everything Airflow stored: the metadata database's tables as text (XCom, rendered templates,
    triggers, task instances), every log file, and what the run logged (``dag.test()`` logs to the
    test's output rather than to files).
    """
    from airflow.utils.session import create_session
    from sqlalchemy import inspect, text

    texts = []
    with create_session() as session:
        for table in inspect(session.get_bind()).get_table_names():
            rows = session.execute(text(f'SELECT * FROM "{table}"')).fetchall()
            texts.extend(repr(row) for row in rows)
    texts.extend(path.read_text(errors="replace") for path in airflow_home.rglob("*.log"))
    return "\n".join([*texts, printed])


def test_bucket_to_bucket_signs_private_sources_and_saves_typed_complete_objects(
    emulator: Callable[..., EmulatorServer],
    run_dag: Callable[..., Any],
    s3: S3Bucket,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    emu = emulator()
    sources = upload_samples(emu, s3, "incoming/")
    dag_run = run_dag(
        "example_novita_bucket_to_bucket",
        source_prefix=s3.uri("incoming/"),
        output_prefix=s3.uri("upscaled/"),
        resolution="2k",
    )
    assert dag_run.state == "success", task_states(dag_run)
    records = xcom(dag_run, "upscale")
    assert [record["image"] for record in records] == sorted(sources)

    # Novita was given URLs signed for 30 minutes, which it could fetch; nothing else saw them.
    fetched = [task["image"] for task in emu.tasks()]
    assert len(fetched) == 3
    for url in fetched:
        assert urlsplit(url).netloc == urlsplit(s3.endpoint).netloc
        assert signed_for(url) == pytest.approx(1800, abs=120)
    day = f"upscaled/{dag_run.logical_date:%Y-%m-%d}/"
    assert s3.keys(day) == sorted(urlsplit(record["path"]).path.lstrip("/") for record in records), (
        "every file under its documented name, and no .partial object (uploaded whole from a local file)"
    )
    for record in records:
        assert record["path"].startswith(s3.uri(day))
        body, content_type = s3.get(urlsplit(record["path"]).path.lstrip("/"))
        check_image(body, "2k", "png")
        assert content_type == "image/png"
    printed = capfd.readouterr()
    assert "Submitted s3://" in printed.out + caplog.text, "the run's log lines are looked at"
    stored = stored_by_airflow(Path(os.environ["AIRFLOW_HOME"]), printed.out + printed.err + caplog.text)
    for url in fetched:
        query = urlsplit(url).query
        signature = parse_qs(query)["Signature"][0]
        assert query not in stored
        assert signature not in stored
        assert quote(signature, safe="") not in stored


def test_a_rerun_reuses_the_objects_in_the_bucket_by_source_uri(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], s3: S3Bucket
) -> None:
    emu = emulator()
    upload_samples(emu, s3, "in/")
    conf = {"source_prefix": s3.uri("in/"), "output_prefix": s3.uri("out/"), "resolution": "2k"}
    first = run_dag("example_novita_bucket_to_bucket", **conf)
    second = run_dag("example_novita_bucket_to_bucket", **conf)
    assert (first.state, second.state) == ("success", "success")
    assert emu.stats()["accepted_submissions"] == 3, "the second run signs again but submits nothing"
    again = xcom(second, "upscale")
    assert [record["reused"] for record in again] == [True] * 3
    assert [record["path"] for record in again] == [record["path"] for record in xcom(first, "upscale")]


def test_a_missing_source_object_fails_the_task_before_anything_is_submitted(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], s3: S3Bucket
) -> None:
    emu = emulator()
    there = upload_samples(emu, s3, "in/")[0]
    dag_run = run_dag("novita_test_upscale_no_retry", images=[there, s3.uri("in/missing.png")])
    assert dag_run.state == "failed"
    assert emu.stats()["accepted_submissions"] == 0


def test_mapped_storage_sources_write_to_the_bucket(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], s3: S3Bucket
) -> None:
    emu = emulator()
    sources = upload_samples(emu, s3, "in/")
    dag_run = run_dag("novita_test_mapped", images=sources, output_path=s3.uri("out/"))
    assert dag_run.state == "success", task_states(dag_run)
    records = [xcom(dag_run, "upscale", map_index=index)[0] for index in range(3)]
    assert [record["image"] for record in records] == sources
    assert len(s3.keys("out/")) == 3
    for record in records:
        body, content_type = s3.get(urlsplit(record["path"]).path.lstrip("/"))
        check_image(body, "2k", "jpeg")
        assert content_type == "image/jpeg"


def test_a_broken_download_leaves_nothing_in_the_bucket(s3: S3Bucket) -> None:
    """The bytes gather in a local file and are uploaded only once complete: no object, not even a
    partial one, is ever made for a download that broke off."""

    def truncated(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": "1000"}, content=b"\x89PNG" + b"\0" * 10)

    result = TaskResult(
        "t-1", TaskStatus.SUCCEED, images=(ResultImage("https://cdn.test/t-1.png", "png", 3600),)
    )
    with pytest.raises(NovitaError, match="download broke off"):
        persist_results(
            [result],
            [Destination(s3.uri("in/a.png"), "2k", 0)],
            s3.uri("out/"),
            map_index=-1,
            transport=httpx.MockTransport(truncated),
        )
    assert s3.keys() == []
