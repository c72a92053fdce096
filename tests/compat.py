"""
What the tests need from Airflow that older Airflow 3 releases keep elsewhere, in one place.

The tests are written against the newest Airflow; each fallback below names the release from which
it is unnecessary, so that a block can go once the provider's floor passes it. The exceptions are
imported with the same preference as ``airflow_provider_novita._compat`` (the Task SDK first), but
not from there: a test must catch the class the Airflow release in use raises, whatever the package
under test does internally.

Importing this module imports Airflow: it must come after ``tests.conftest`` has set AIRFLOW_HOME (as
any test module does), or be used by a process whose environment already configures Airflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import (
        AirflowFailException,
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )
else:
    try:
        from airflow.sdk.exceptions import (
            AirflowFailException,
            AirflowRescheduleException,
            AirflowSensorTimeout,
            AirflowSkipException,
            TaskDeferred,
        )
    except ImportError:  # Airflow 3.1: in the Task SDK from 3.2
        from airflow.exceptions import (
            AirflowFailException,
            AirflowRescheduleException,
            AirflowSensorTimeout,
            AirflowSkipException,
            TaskDeferred,
        )

    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1: moved to airflow.dag_processing in 3.2
        from airflow.models.dagbag import DagBag

__all__ = [
    "AirflowFailException",
    "AirflowRescheduleException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "DagBag",
    "TaskDeferred",
]
