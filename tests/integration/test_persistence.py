"""
Results saved to object storage before their URLs expire (``output_path``), run with ``dag.test()``.

The emulator serves real files over loopback and counts downloads per result, so "not downloaded
again" is proven by its counters, and a broken download is a real connection cut mid-body.
"""

from __future__ import annotations

import io
import json
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import pendulum
import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.io import attach
from PIL import Image

from airflow_provider_novita.exceptions import NovitaError
from airflow_provider_novita.ledger import LEDGER_PREFIX
from airflow_provider_novita.models import ResultImage, TaskResult, TaskStatus
from airflow_provider_novita.storage import Destination, persist_results
from tests.integration.conftest import task_states, xcom

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow_provider_novita.emulator import EmulatorServer

DEFERRABLE = "novita_test_upscale_deferrable"
SYNC = "novita_test_upscale_sync"


def files(folder: Path) -> list[str]:
    """What a task left in ``folder``, temporary files included, but not a failed task's ledger
    (Airflow before 3.3 keeps it there for the next try: see test_ledger.py)."""
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith(LEDGER_PREFIX))


def long_edge(data: bytes) -> int:
    return max(Image.open(io.BytesIO(data)).size)


@pytest.mark.parametrize("dag_id", [DEFERRABLE, SYNC])
def test_writes_every_image_to_a_local_folder(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path, dag_id: str
) -> None:
    emu = emulator()
    sources = [f"{emu.base_url}/samples/landscape.png", f"{emu.base_url}/samples/portrait.jpg"]
    dag_run = run_dag(dag_id, images=sources, output_path=f"file://{tmp_path}/out")
    assert dag_run.state == "success"
    records = xcom(dag_run, "upscale")
    assert [Path(r["path"].removeprefix("file://")).parent for r in records] == [tmp_path / "out"] * 2
    assert files(tmp_path / "out") == sorted(Path(r["path"]).name for r in records)
    assert [Path(r["path"]).name.rsplit("-", 1)[0] for r in records] == ["landscape-2k", "portrait-2k"]
    for record in records:
        data = Path(record["path"].removeprefix("file://")).read_bytes()
        assert long_edge(data) == 2048
        assert Image.open(io.BytesIO(data)).format == "PNG"


@pytest.fixture
def memory_fs() -> Iterator[fsspec.AbstractFileSystem]:
    fs = fsspec.filesystem("memory")
    attach("memory", fs=fs)
    yield fs
    fs.store.clear()


def test_writes_to_memory_object_storage(
    emulator: Callable[..., EmulatorServer],
    run_dag: Callable[..., Any],
    memory_fs: fsspec.AbstractFileSystem,
) -> None:
    emu = emulator()
    dag_run = run_dag(
        DEFERRABLE, images=[f"{emu.base_url}/samples/square.webp"], output_path="memory://bucket/up/"
    )
    assert dag_run.state == "success"
    (record,) = xcom(dag_run, "upscale")
    # Where it was written, not how the path prints: universal_pathlib 0.2 (Airflow 3.0, 3.1) prints
    # memory:///bucket/up/..., 0.3 (Airflow 3.2+) memory://bucket/up/..., both the same place.
    written = ObjectStoragePath(record["path"])
    assert (written.protocol, posixpath.dirname(written.path)) == ("memory", "/bucket/up")
    assert written.name.startswith("square-2k-")
    assert long_edge(written.read_bytes()) == 2048
    assert memory_fs.ls("/bucket/up", detail=False) == ["/bucket/up/" + record["path"].rsplit("/", 1)[-1]]


def test_names_never_collide_within_a_batch(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    same = f"{emu.base_url}/samples/landscape.png"
    sources = [same, same, f"{same}?variant=2"]
    dag_run = run_dag(SYNC, images=sources, output_path=f"file://{tmp_path}")
    assert dag_run.state == "success"
    names = files(tmp_path)
    assert len(names) == 3
    assert all(name.startswith("landscape-2k-") for name in names)


def test_a_rerun_writes_the_same_names(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    sources = [f"{emu.base_url}/samples/landscape.png"]
    first = xcom(run_dag(SYNC, images=sources, output_path=f"file://{tmp_path}"), "upscale")
    second = xcom(run_dag(SYNC, images=sources, output_path=f"file://{tmp_path}"), "upscale")
    assert [r["path"] for r in first] == [r["path"] for r in second]
    assert len(files(tmp_path)) == 1


def test_mapped_tasks_write_distinct_files(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    same = f"{emu.base_url}/samples/portrait.jpg"
    dag_run = run_dag("novita_test_mapped", images=[same, same], output_path=f"file://{tmp_path}")
    assert dag_run.state == "success"
    assert task_states(dag_run)[("upscale", 1)] == "success"
    names = files(tmp_path)
    assert len(names) == 2
    assert all(name.startswith("portrait-2k-") and name.endswith(".jpg") for name in names)


def test_a_broken_download_leaves_no_file_and_a_retry_downloads_only_what_is_missing(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    # Each result's first download is cut off halfway. Try 1 breaks on image A; try 2 saves A and
    # breaks on B; try 3 must keep A and fetch only B. Every try finds the tasks of the first: in the
    # task state store on Airflow 3.3+, in the ledger under output_path before.
    emu = emulator(truncate_downloads=1)
    sources = [f"{emu.base_url}/samples/landscape.png", f"{emu.base_url}/samples/portrait.jpg"]
    dag_run = run_dag(DEFERRABLE, images=sources, output_path=f"file://{tmp_path}")
    stats = emu.stats()
    assert dag_run.state == "success"
    records = xcom(dag_run, "upscale")
    assert sorted(stats["downloads_by_output"].values()) == [2, 2], "one broken and one good download each"
    assert stats["accepted_submissions"] == 2, "retries reattached instead of submitting again"
    assert files(tmp_path) == sorted(Path(r["path"]).name for r in records), "no partial file left behind"
    for record in records:
        assert long_edge(Path(record["path"].removeprefix("file://")).read_bytes()) == 2048


def test_an_expired_result_url_fails_the_task_and_writes_nothing(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator(output_ttl=0.01)
    dag_run = run_dag(
        SYNC, images=[f"{emu.base_url}/samples/landscape.png"], output_path=f"file://{tmp_path}"
    )
    assert dag_run.state == "failed"
    assert task_states(dag_run)[("upscale", -1)] == "failed"
    assert files(tmp_path) == []


def test_an_expired_url_error_names_task_host_and_age(
    emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    emu = emulator(output_ttl=3600)
    image = ResultImage(f"{emu.base_url}/outputs/unknown.png?X-Amz-Signature=secret", "png", 3600)
    result = TaskResult(
        "0000-expired",
        TaskStatus.SUCCEED,
        images=(image,),
        completed_at=pendulum.datetime(2026, 1, 1, tz="UTC").timestamp(),
    )
    with pytest.raises(NovitaError) as info:
        persist_results(
            [result],
            [Destination(None, None, 0)],
            f"file://{tmp_path}",
            map_index=-1,
        )
    message = str(info.value)
    assert "Novita task 0000-expired" in message
    assert emu.base_url.removeprefix("http://") in message
    assert "X-Amz-Signature" not in message
    assert "HTTP 404" in message
    assert "the task finished" in message
    assert "h " in message
    assert "its URL expired at 2026-01-01T01:00:00Z" in message
    assert files(tmp_path) == []


def test_asset_events_carry_paths_and_count(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    emu = emulator()
    dag_run = run_dag(
        DEFERRABLE, images=[f"{emu.base_url}/samples/landscape.png"], output_path=f"file://{tmp_path}"
    )
    (record,) = xcom(dag_run, "upscale")
    with create_session() as session:
        event = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "novita_test_images", AssetEvent.source_run_id == dag_run.run_id)
            .one()
        )
        extra = event.extra if isinstance(event.extra, dict) else json.loads(event.extra)
    assert extra == {"count": 1, "task_ids": [record["task_id"]], "paths": [record["path"]]}
