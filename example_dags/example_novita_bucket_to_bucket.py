"""
Upscale every image under one bucket prefix into another, with sources that are private.

``list_sources`` lists ``source_prefix`` through Airflow's object storage and returns the images'
URIs (``s3://aws_default@bucket/key``): plain strings that name objects, never URLs that grant
access. ``UpscaleOperator`` checks that each object exists, then signs each one with the
``aws_default`` connection right before submitting it, so Novita gets a URL valid for
``source_url_expiry`` seconds, and nothing stored by Airflow (XCom, logs, rendered templates, lineage)
ever holds one. The whole listing is one batch in one task instance: one worker slot, one deferral,
rather than a task per image. The results are saved under ``output_prefix`` with their content type
before the task succeeds; a re-run of a day pays only for images whose file is missing.

Needs ``novita_default`` (see docs/connection.md) and an AWS connection, e.g.::

    export AIRFLOW_CONN_AWS_DEFAULT='{"conn_type": "aws", "login": "<key id>", "password": "<secret>"}'

Any storage Airflow's object storage handles and whose filesystem can sign works the same way
(``gs://google_cloud_default@bucket/...`` with the Google provider, ``abfs://...`` with Azure's).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, ObjectStoragePath, Param, task

from airflow_provider_novita.models import RESOLUTIONS
from airflow_provider_novita.operators.upscale import UpscaleOperator

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

with DAG(
    dag_id="example_novita_bucket_to_bucket",
    description="Upscale the images under one bucket prefix into another, signing private sources",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "source_prefix": Param("s3://aws_default@my-bucket/incoming/", type="string"),
        "output_prefix": Param("s3://aws_default@my-bucket/upscaled/", type="string"),
        "resolution": Param("2k", enum=list(RESOLUTIONS)),
    },
    tags=["example", "novita"],
) as dag:

    @task
    def list_sources(params: dict[str, str]) -> list[str]:
        prefix = ObjectStoragePath(params["source_prefix"])
        return sorted(str(path) for path in prefix.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)

    UpscaleOperator(
        task_id="upscale",
        image=list_sources(),
        resolution="{{ params.resolution }}",
        output_format="png",
        output_path="{{ params.output_prefix }}{{ ds }}/",
        source_url_expiry=timedelta(minutes=30),
        deferrable=True,
        retries=2,
    )
