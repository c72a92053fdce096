"""DAGs that the integration tests run with ``dag.test()``; everything comes in through params."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, task, task_group

from airflow_provider_novita.operators.upscale import UpscaleOperator
from airflow_provider_novita.sensors.task_result import TaskResultSensor

for name, deferrable, retries, reuse_existing in (
    ("deferrable", True, 2, True),
    ("sync", False, 2, True),
    ("no_retry", True, 0, True),
    ("no_reuse", True, 0, False),
):
    with DAG(
        dag_id=f"novita_test_upscale_{name}",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        render_template_as_native_obj=True,
        params={"images": [], "output_path": None, "resolution": "2k"},
    ):
        UpscaleOperator(
            task_id="upscale",
            image="{{ params.images }}",
            resolution="{{ params.resolution }}",
            output_format="png",
            output_path="{{ params.output_path }}",
            deferrable=deferrable,
            poll_interval=0.5,
            retries=retries,
            retry_delay=timedelta(seconds=0),
            reuse_existing=reuse_existing,
            outlets=[Asset("novita_test_images")],
        )

with DAG(
    dag_id="novita_test_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    render_template_as_native_obj=True,
    params={"images": [], "output_path": None},
):

    @task
    def images(params: dict[str, Any]) -> list[str]:
        return list(params["images"])

    UpscaleOperator.partial(
        task_id="upscale",
        resolution="2k",
        output_format="jpeg",
        output_path="{{ params.output_path }}",
        poll_interval=0.5,
    ).expand(image=images())

with DAG(
    dag_id="novita_test_idioms",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"images": [], "resolution": "2k"},
):
    # What DAG authors commonly write, none of which Airflow resolves before the task starts.

    # The context key after the argument: Airflow before 3.2 gives context keys a default of None,
    # and a parameter without a default cannot follow one.
    @task
    def source(index: int, params: dict[str, Any]) -> str:
        return str(params["images"][index])

    @task
    def sources(params: dict[str, Any]) -> list[str]:
        return list(params["images"])

    @task
    def pick(params: dict[str, Any]) -> str:
        return str(params["resolution"])

    UpscaleOperator(
        task_id="listed",
        image=[source(index=0), source(index=1)],
        resolution=pick(),
        output_format="{% if params.resolution == '2k' %}png{% else %}jpeg{% endif %}",
        deferrable=True,
        poll_interval=0.5,
    )

    @task_group
    def per_image(url: str) -> None:
        UpscaleOperator(task_id="mapped", image=url, resolution="2k", output_format="webp", poll_interval=0.5)

    per_image.expand(url=sources())

    submitted = UpscaleOperator(
        task_id="submit", image="{{ params.images[0] }}", resolution="2k", wait_for_completion=False
    )
    TaskResultSensor(
        task_id="wait_rescheduled", task_ids=submitted.output, mode="reschedule", poke_interval=0.5
    )

with DAG(
    dag_id="novita_test_submit_then_sense",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    render_template_as_native_obj=True,
    params={"images": [], "output_path": None},
):
    submitted = UpscaleOperator(
        task_id="submit", image="{{ params.images }}", resolution="2k", wait_for_completion=False
    )
    TaskResultSensor(
        task_id="wait",
        task_ids=submitted.output,
        images="{{ params.images }}",
        output_path="{{ params.output_path }}",
        poke_interval=0.5,
    )
