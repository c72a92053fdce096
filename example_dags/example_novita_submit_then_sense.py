"""
Submit images to Novita without waiting, then wait for them with a deferrable sensor.

Useful when something else should happen between submission and results, or when the results are
awaited in another DAG: ``submit`` returns at once with the Novita task ids (also in its XCom under
``task_ids``), and ``wait`` defers until they are done and saves the images under ``output_path``.

``render_template_as_native_obj`` makes ``{{ params.image_urls }}`` render as a list.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_novita.operators.upscale import UpscaleOperator
from airflow_provider_novita.sensors.task_result import TaskResultSensor

with DAG(
    dag_id="example_novita_submit_then_sense",
    description="Submit to Novita, then wait with TaskResultSensor",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "image_urls": Param(
            ["https://upload.wikimedia.org/wikipedia/commons/4/47/PNG_transparency_demonstration_1.png"],
            type="array",
            items={"type": "string"},
        ),
        "output_path": Param("file:///tmp/novita-sensed/", type="string"),
    },
    tags=["example", "novita"],
) as dag:
    submit = UpscaleOperator(
        task_id="submit",
        image="{{ params.image_urls }}",
        resolution="2k",
        output_format="jpeg",
        wait_for_completion=False,
    )

    wait = TaskResultSensor(
        task_id="wait",
        task_ids=submit.output,
        images="{{ params.image_urls }}",
        output_path="{{ params.output_path }}",
        deferrable=True,
    )

    @task
    def report(records: list[dict[str, Any]]) -> list[str]:
        for record in records:
            print(f"{record['image']} -> {record['path']}")
        return [record["path"] for record in records]

    report(wait.output)
