"""The triggerer benchmark's report: what a run's JSON says, and nothing else."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.triggerer_report import find, tables, targets

RUN = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"


@pytest.fixture
def document() -> dict[str, Any]:
    return dict(json.loads((RUN / "latest.json").read_text()))


def test_the_committed_tables_are_the_report_of_the_committed_run(document: dict[str, Any]) -> None:
    assert tables(document) + "\n" == (RUN / "latest.md").read_text()


def verdicts(rows: list[dict[str, Any]], prefix: str) -> list[bool | None]:
    return [check["met"] for check in targets(rows) if check["target"].startswith(prefix)]


def test_the_moonshot_is_met_only_below_one_core(document: dict[str, Any]) -> None:
    rows = copy.deepcopy(document["rows"])
    moonshot = find(rows, section="moonshot")
    assert moonshot is not None
    moonshot.update(rss_peak_mb=100.0, lag_p99_ms=1.0, lag_max_ms=1.0)

    moonshot["cores"] = 0.5
    assert verdicts(rows, "5. moonshot") == [True]
    moonshot["cores"] = 1.5
    assert verdicts(rows, "5. moonshot") == [False]


def test_a_missing_figure_is_not_measured(document: dict[str, Any]) -> None:
    rows = copy.deepcopy(document["rows"])
    ours = find(rows, run="ours-eta")
    assert ours is not None
    ours["requests_per_job"] = None

    assert verdicts(rows, "1. requests per job with an exact eta") == [None]
    assert "requests per job with an exact eta <= 2.2: - - **not measured**" in tables(
        {**document, "rows": rows}
    )


def test_a_run_without_a_moonshot_grades_no_moonshot(document: dict[str, Any]) -> None:
    rows = [row for row in document["rows"] if row["section"] != "moonshot"]

    assert verdicts(rows, "5.") == []
