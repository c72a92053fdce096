"""
Which failures end an Airflow task at once, without the retries its DAG gave it.

A retry runs the same arguments against the same connection, storage and proxy. When nothing of
that can change by itself, every retry would hold a worker slot for the same answer (three tries and
tens of seconds for a typo, with ``retries=2``), and the task would look flaky rather than wrong. So
the operator and the sensor raise ``AirflowFailException`` for:

* an argument that fails validation when the task starts (a template or an XComArg that resolved to
  something invalid), and a source that cannot work (its object does not exist, its connection does
  not exist, its filesystem cannot sign), all found before anything is submitted;
* what :func:`~airflow_provider_novita.retries.is_permanent` calls permanent: a key Novita refuses,
  a request it finds invalid, a proxy that refuses its credentials.

Everything that may pass (429, 5xx, timeouts, dropped connections, a store that did not answer) is
raised as it is, and Airflow's retries apply. The message stays the original error's, which says
what to fix and where; the original is the exception's cause.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from airflow_provider_novita._compat import AirflowFailException
from airflow_provider_novita.exceptions import NovitaError
from airflow_provider_novita.retries import is_permanent

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def permanent_errors_fail_once() -> Iterator[None]:
    """Fail the task without retries when a permanent :class:`NovitaError` leaves the block."""
    try:
        yield
    except NovitaError as err:
        if is_permanent(err):
            raise AirflowFailException(str(err)) from err
        raise


@contextmanager
def invalid_arguments_fail_once() -> Iterator[None]:
    """
    Fail the task without retries when the block's checks raise a ValueError: the block holds only
    checks of what the DAG gave the task, which the same DAG run gives every retry again.
    """
    try:
        yield
    except ValueError as err:
        raise AirflowFailException(str(err)) from err
