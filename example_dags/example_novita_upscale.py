"""
Upscale one image with Novita AI, deferrably, and use the result downstream.

While Novita works, the ``upscale`` task is deferred: the wait runs on the triggerer and the worker
slot is free. The upscaled image is saved under ``output_path`` before ``upscale`` succeeds, because
Novita's result URL expires; ``report`` then reads the record from XCom.

Needs a connection ``novita_default`` of type ``novita`` whose password is your API key, e.g.::

    export AIRFLOW_CONN_NOVITA_DEFAULT='{"conn_type": "novita", "password": "<your key>"}'

Choose the image and settings when triggering::

    airflow dags test example_novita_upscale -c '{"image_url": "https://.../photo.jpg", "resolution": "2k"}'
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_novita.models import OUTPUT_FORMATS, RESOLUTIONS
from airflow_provider_novita.operators.upscale import UpscaleOperator

SAMPLE_IMAGE = "https://upload.wikimedia.org/wikipedia/commons/4/47/PNG_transparency_demonstration_1.png"

with DAG(
    dag_id="example_novita_upscale",
    description="Upscale one image with Novita AI and report where it was saved",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "image_url": Param(SAMPLE_IMAGE, type="string", description="http(s) URL of the source image"),
        "resolution": Param("4k", enum=list(RESOLUTIONS)),
        "output_format": Param("png", enum=list(OUTPUT_FORMATS)),
        "output_path": Param("file:///tmp/novita-example/", type="string", description="folder URI"),
    },
    tags=["example", "novita"],
) as dag:
    upscale = UpscaleOperator(
        task_id="upscale",
        image="{{ params.image_url }}",
        resolution="{{ params.resolution }}",
        output_format="{{ params.output_format }}",
        output_path="{{ params.output_path }}",
        deferrable=True,
        # Safe with Novita's per-job billing: on Airflow 3.3+ a retry reattaches to the job it already
        # submitted. It also covers a known Airflow race around deferral (apache/airflow#67287).
        retries=2,
        retry_delay=timedelta(seconds=10),
    )

    @task
    def report(records: list[dict[str, Any]]) -> str:
        (record,) = records
        print(f"Novita task {record['task_id']} upscaled {record['image']} into {record['path']}")
        return str(record["path"])

    report(upscale.output)
