"""
DAGs of the cluster tests and of ``make soak`` (tests/cluster): each run's conf says what to upscale.

conf: ``{"conn_id": ..., "images": [url, ...], "batch_size": 1, "output_path": "file:///..."}``. The
images are cut into batches of ``batch_size``, and one mapped ``upscale`` task instance upscales each
batch, deferrable, as a team with many images would run it.

* ``novita_cluster``: retries, so that a lost worker or a FAILED Novita job is retried;
* ``novita_cluster_deadline``: no retries and a short ``timeout``, to see when a deadline fires;
* ``novita_cluster_fast``: no retries (Airflow's default), for jobs that end within a second, whose
  triggers fire soon after the deferral: a try that Airflow fails is a failed task here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_novita.operators.upscale import UpscaleOperator

DEADLINE_SECONDS = 60.0

for dag_id, retries, timeout in (
    ("novita_cluster", 3, 3600.0),
    ("novita_cluster_deadline", 0, DEADLINE_SECONDS),
    ("novita_cluster_fast", 0, 600.0),
):
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        max_active_tasks=1000,
        params={"conn_id": "novita_default", "images": [], "batch_size": 1, "output_path": None},
    ):

        @task
        def batches(params: dict[str, Any]) -> list[list[str]]:
            images, size = list(params["images"]), int(params["batch_size"])
            return [images[start : start + size] for start in range(0, len(images), size)]

        UpscaleOperator.partial(
            task_id="upscale",
            novita_conn_id="{{ params.conn_id }}",
            resolution="2k",
            output_format="jpeg",
            output_path="{{ params.output_path }}",
            deferrable=True,
            timeout=timeout,
            retries=retries,
            retry_delay=timedelta(seconds=5),
        ).expand(image=batches())
