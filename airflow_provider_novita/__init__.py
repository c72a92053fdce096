"""
Apache Airflow provider for Novita AI's image upscaler.

Importing this package imports nothing from Airflow: ``get_provider_info`` is read by Airflow's
providers manager, which must stay cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# The connection form: only the fields a Novita connection uses, with their meaning. Placeholders
# must fit their input box (the UI cuts them, about 40 characters show). Airflow's form metadata has
# no description for standard fields, so what the base URL is for (empty: Novita's API; the
# emulator's URL for local runs) is told by docs/connection.md and the hook's docstring.
CONNECTION_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "login", "extra"],
    "relabeling": {"password": "API Key", "host": "API base URL"},
    "placeholders": {"password": "your Novita API key", "host": "https://api.novita.ai"},
}

CONNECTION_FIELDS: dict[str, Any] = {
    "timeout": {
        "label": "Request timeout (seconds)",
        "description": "Per HTTP request to Novita. Default 60.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries of a failed request. A poll is retried after 429, 5xx or a network error; a "
        "submission only after 429, 503 or a request that was never sent. Default 5.",
        "schema": {"type": ["integer", "null"], "minimum": 0},
    },
    "max_images_per_task": {
        "label": "Max images per task",
        "description": "The most images one task may submit with this connection (spend guard). "
        "Empty: no cap.",
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
    "proxy": {
        "label": "Proxy URL",
        "description": "http(s)://[user:password@]host:port for every call of this connection, "
        "downloads included. Empty: the HTTPS_PROXY / NO_PROXY environment applies.",
        "schema": {"type": ["string", "null"]},
    },
}


def get_provider_info() -> dict[str, Any]:
    """Provider metadata, validated by Airflow against ``provider_info.schema.json``."""
    return {
        "package-name": "airflow-provider-novita",
        "name": "Novita AI",
        "description": "Upscale images with `Novita AI <https://novita.ai/>`__ from Airflow DAGs.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Novita AI",
                "external-doc-url": "https://novita.ai/docs/api-reference/model-apis-image-upscaler",
                "tags": ["ai", "image"],
            }
        ],
        "hooks": [
            {"integration-name": "Novita AI", "python-modules": ["airflow_provider_novita.hooks.novita"]}
        ],
        "operators": [
            {"integration-name": "Novita AI", "python-modules": ["airflow_provider_novita.operators.upscale"]}
        ],
        "sensors": [
            {
                "integration-name": "Novita AI",
                "python-modules": ["airflow_provider_novita.sensors.task_result"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Novita AI",
                "python-modules": ["airflow_provider_novita.triggers.task_result"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "novita",
                "hook-class-name": "airflow_provider_novita.hooks.novita.NovitaHook",
                "hook-name": "Novita AI",
                "ui-field-behaviour": CONNECTION_UI_FIELD_BEHAVIOUR,
                "conn-fields": CONNECTION_FIELDS,
            }
        ],
    }
