"""Every example DAG runs end to end against the emulator, and its images are really upscaled."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image

from tests.integration.conftest import task_states, xcom

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_novita.emulator import EmulatorServer

# The emulator's choice of long edge per resolution (documented in airflow_provider_novita.emulator).
LONG_EDGE = {"2k": 2048, "4k": 4096}
PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def check_image(source: Path | bytes, resolution: str, output_format: str) -> None:
    image = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    assert image.format == PIL_FORMAT[output_format]
    assert max(image.size) == LONG_EDGE[resolution]


def local(uri: str) -> Path:
    assert uri.startswith("file://")
    return Path(uri.removeprefix("file://"))


def test_single_image_deferrable(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    source = f"{emu.base_url}/samples/landscape.png"
    dag_run = run_dag(
        "example_novita_upscale",
        image_url=source,
        resolution="2k",
        output_format="png",
        output_path=f"file://{tmp_path}/out/",
    )
    assert dag_run.state == "success"
    (record,) = xcom(dag_run, "upscale")
    assert record["image"] == source
    assert xcom(dag_run, "upscale", key="task_ids") == [record["task_id"]]
    assert xcom(dag_run, "report") == record["path"]
    check_image(local(record["path"]), "2k", "png")
    check_image(httpx.get(record["image_url"]).content, "2k", "png")  # the emulator's own result
    assert emu.stats()["accepted_submissions"] == 1


def test_daily_batch_with_dynamic_task_mapping(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    sources = [f"{emu.base_url}/samples/{name}" for name in ("landscape.png", "portrait.jpg", "square.webp")]
    dag_run = run_dag(
        "example_novita_daily_batch", image_urls=sources, resolution="2k", output_root=f"file://{tmp_path}"
    )
    assert dag_run.state == "success"
    states = task_states(dag_run)
    assert [states[("upscale", index)] for index in range(3)] == ["success"] * 3
    summary = xcom(dag_run, "summarise")
    assert summary["count"] == 3
    day_folder = f"{tmp_path}/{dag_run.logical_date:%Y-%m-%d}"
    assert all(path.startswith(f"file://{day_folder}/") for path in summary["paths"])
    for path in summary["paths"]:
        check_image(local(path), "2k", "webp")
    assert emu.stats()["submissions_by_image"] == dict.fromkeys(sources, 1)


def test_submit_then_deferrable_sensor(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    sources = [f"{emu.base_url}/samples/landscape.png", f"{emu.base_url}/samples/transparent.png"]
    dag_run = run_dag(
        "example_novita_submit_then_sense", image_urls=sources, output_path=f"file://{tmp_path}/"
    )
    assert dag_run.state == "success"
    task_ids = xcom(dag_run, "submit", key="task_ids")
    assert xcom(dag_run, "submit") == task_ids
    records = xcom(dag_run, "wait")
    assert [(r["task_id"], r["image"]) for r in records] == list(zip(task_ids, sources, strict=True))
    for record in records:
        check_image(local(record["path"]), "2k", "jpeg")  # transparent PNG in, JPEG out
    assert emu.stats()["accepted_submissions"] == 2
