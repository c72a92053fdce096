"""Common DAG idioms parse and run end to end: XComArgs, mapped task groups, Jinja statements, reschedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from tests.integration.conftest import task_states, xcom
from tests.s3 import S3Bucket

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_novita.emulator import EmulatorServer


def test_xcomargs_mapped_arguments_jinja_statements_and_a_rescheduled_sensor_run(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any]
) -> None:
    emu = emulator(job_duration=1.5)
    sources = [f"{emu.base_url}/samples/landscape.png", f"{emu.base_url}/samples/portrait.jpg"]
    dag_run = run_dag("novita_test_idioms", images=sources, resolution="2k")
    assert dag_run.state == "success", task_states(dag_run)

    listed = xcom(dag_run, "listed")
    assert [(r["image"], r["image_type"]) for r in listed] == [(sources[0], "png"), (sources[1], "png")]
    mapped = [xcom(dag_run, "per_image.mapped", map_index=index)[0] for index in range(2)]
    assert [(r["image"], r["image_type"]) for r in mapped] == [(sources[0], "webp"), (sources[1], "webp")]
    (sensed,) = xcom(dag_run, "wait_rescheduled")
    assert sensed["task_id"] == xcom(dag_run, "submit")[0]
    # listed 2, mapped 2, submit 1; the sensor submits nothing.
    assert emu.stats()["submissions_by_image"] == {sources[0]: 3, sources[1]: 2}


def test_the_same_idioms_with_sources_in_a_bucket(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], s3: S3Bucket
) -> None:
    emu = emulator(job_duration=1.5)
    sources = [
        s3.put(name, httpx.get(f"{emu.base_url}/samples/{name}").content)
        for name in ("landscape.png", "portrait.jpg")
    ]
    dag_run = run_dag("novita_test_idioms", images=sources, resolution="2k")
    assert dag_run.state == "success", task_states(dag_run)

    assert [r["image"] for r in xcom(dag_run, "listed")] == sources  # a list of XComArgs
    mapped = [xcom(dag_run, "per_image.mapped", map_index=index)[0] for index in range(2)]
    assert [r["image"] for r in mapped] == sources  # mapped arguments
    (sensed,) = xcom(dag_run, "wait_rescheduled")
    assert sensed["task_id"] == xcom(dag_run, "submit")[0]  # a template
    # Every submission got a signed URL of its object; each image was signed anew for each of them.
    fetched = [task["image"] for task in emu.tasks()]
    assert len(fetched) == 5
    assert all(url.startswith(f"{s3.endpoint}/{s3.name}/") and "Signature=" in url for url in fetched)
