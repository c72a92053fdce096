"""
What older Airflow 3 releases lack, in one place, each with the release that makes its shim unnecessary.

The provider is written against the Task SDK of Airflow 3.2+ (``airflow.sdk``). Airflow 3.1 keeps
some of the same names in its pre-SDK modules; the classes are the ones the task runner of
that release raises and catches, so importing them from there is not a copy but the real thing.
Delete a block when the floor passes the release its comment names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath, conf
    from airflow.sdk.exceptions import (
        AirflowFailException,
        AirflowNotFoundException,
        AirflowSensorTimeout,
        AirflowSkipException,
    )
else:
    try:
        from airflow.sdk import conf
    except ImportError:  # Airflow 3.1: the Task SDK exports the configuration from 3.2
        from airflow.configuration import conf

    try:
        from airflow.sdk.exceptions import (
            AirflowFailException,
            AirflowNotFoundException,
            AirflowSensorTimeout,
            AirflowSkipException,
        )
    except ImportError:  # Airflow 3.1: in the Task SDK from 3.2
        from airflow.exceptions import (
            AirflowFailException,
            AirflowNotFoundException,
            AirflowSensorTimeout,
            AirflowSkipException,
        )


def storage_conn_id(path: ObjectStoragePath) -> str | None:
    """The Airflow connection id an ``ObjectStoragePath`` names (``s3://conn_id@bucket/key``), if any."""
    conn_id = getattr(path, "conn_id", None)
    if conn_id is None:  # Airflow 3.1 (universal_pathlib 0.2) keeps it in the storage options
        conn_id = path.storage_options.get("conn_id")
    return str(conn_id) if conn_id else None


__all__ = [
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "conf",
    "storage_conn_id",
]
