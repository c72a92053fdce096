"""
A daily pipeline: upscale the images an upstream task found, one mapped task per image, then summarise.

``find_new_images`` stands for whatever produces the day's images (a listing of a bucket, a query);
here it returns the ``image_urls`` param. Each image is upscaled by its own mapped
``UpscaleOperator`` instance, deferred while Novita works, and saved under
``<output_root>/<ds>/`` before the task succeeds, because Novita's result URLs expire. Every
mapped instance emits an event on the ``novita_upscaled_images`` asset with the written paths, so
DAGs scheduled on that asset know what arrived.

To write to a bucket instead of a local folder, set ``output_root`` to an object storage URI whose
provider is installed, e.g. ``s3://aws_default@my-bucket/upscaled`` (apache-airflow-providers-amazon
with s3fs) or ``gs://google_cloud_default@my-bucket/upscaled`` (apache-airflow-providers-google).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, task

from airflow_provider_novita.operators.upscale import UpscaleOperator

UPSCALED_IMAGES = Asset("novita_upscaled_images")

with DAG(
    dag_id="example_novita_daily_batch",
    description="Upscale the day's images with Novita AI, one mapped task per image",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "image_urls": Param(
            [
                "https://upload.wikimedia.org/wikipedia/commons/4/47/PNG_transparency_demonstration_1.png",
                "https://upload.wikimedia.org/wikipedia/commons/a/a9/Example.jpg",
            ],
            type="array",
            items={"type": "string"},
        ),
        "resolution": Param("2k", enum=["2k", "4k", "8k"]),
        "output_root": Param("file:///tmp/novita-daily", type="string", description="folder URI"),
    },
    tags=["example", "novita"],
) as dag:

    @task
    def find_new_images(params: dict[str, Any]) -> list[str]:
        return list(params["image_urls"])

    upscaled = UpscaleOperator.partial(
        task_id="upscale",
        resolution="{{ params.resolution }}",
        output_format="webp",
        output_path="{{ params.output_root }}/{{ ds }}/",
        outlets=[UPSCALED_IMAGES],
        deferrable=True,
        retries=2,
    ).expand(image=find_new_images())

    @task
    def summarise(per_image: Sequence[list[dict[str, Any]]]) -> dict[str, Any]:
        records = [record for records in per_image for record in records]
        summary = {"count": len(records), "paths": sorted(record["path"] for record in records)}
        print(f"Upscaled {summary['count']} image(s): {', '.join(summary['paths'])}")
        return summary

    summarise(upscaled.output)
