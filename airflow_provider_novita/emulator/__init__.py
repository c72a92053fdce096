"""A local, faithful stand-in for Novita AI's image-upscaler API that really upscales images.

Why it exists: the provider's hook, trigger and operators need a server to talk to in tests, demos and
CI without an API key, network access or a bill. The emulator is an independent implementation of the
API as Novita documents it (novita.ai/docs: image upscaler, task result, error codes, user info): it
imports nothing from the rest of this package and nothing from Airflow, so a misunderstanding of the API
in the client cannot hide behind the same misunderstanding here.

What it serves:

* ``POST /v3/async/image-upscaler`` -> ``{"task_id": ...}``; the task then goes QUEUED -> PROCESSING ->
  SUCCEED or FAILED on a timeline set by ``queue_seconds`` and ``job_duration``;
* ``GET /v3/async/task-result?task_id=...`` -> the documented result body (``extra``, ``task``,
  ``images``, ``videos``, ``audios``);
* ``GET /v3/user`` -> account info whose ``credit_balance`` drops with every accepted submission;
* ``GET /outputs/<task_id>.<ext>`` -> the result, behaving like an S3 presigned link (expires after
  ``output_ttl``);
* ``GET /samples/`` -> generated sample images to use as sources, offline;
* ``GET /_emulator/stats`` and ``POST /_emulator/reset`` -> counters proving what clients did.

Errors use the documented flat body ``{"code", "reason", "message", "metadata"}``; the ``/v3`` routes
need ``Authorization: Bearer <api_key>`` (default key ``emulator-key``).

Pixel sizes are the emulator's own choice (the real API does not document them): the long edge of the
result is 2048 for ``2k``, 4096 for ``4k`` and 8192 for ``8k``, aspect ratio kept, Lanczos resampling.

Faults can be injected deterministically (seeded): failed tasks, 429 with or without ``Retry-After``,
503, latency, truncated downloads, expiring result links, the TTL as a string. See
:class:`EmulatorConfig`.

Ways to run it: :class:`EmulatorServer` in-process (a context manager), ``python -m
airflow_provider_novita.emulator`` / ``novita-emulator`` on the command line, or the pytest fixtures of
:mod:`airflow_provider_novita.emulator.pytest_plugin`.
"""

from __future__ import annotations

from .config import EmulatorConfig
from .server import EmulatorServer

__all__ = ["EmulatorConfig", "EmulatorServer"]
