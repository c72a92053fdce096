"""Lets fixtures of the end-to-end tests know whether the test itself failed.

The Airflow cluster fixture prints the tail of every process log at teardown, but only when the test
failed: on success those logs are noise, on failure they are usually the only clue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Generator

    from _pytest.reports import TestReport

FAILED_PHASES = pytest.StashKey[set[str]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, TestReport, TestReport]:
    report: TestReport = yield
    if report.failed:
        item.stash.setdefault(FAILED_PHASES, set()).add(report.when)
    return report
