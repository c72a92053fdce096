"""
Re-runs pay only for what is missing: ``reuse_existing`` with ``output_path``, run with ``dag.test()``.

Each ``dag.test()`` is a new run of the same DAG writing to the same folder, as a cleared run or a
backfill would; the emulator's counters prove what was submitted. (The real cleared run, through
Airflow's REST API on a Celery deployment, is in tests/cluster.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.integration.conftest import xcom

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_novita.emulator import EmulatorServer

MAPPED = "novita_test_mapped"


def _sources(emu: EmulatorServer) -> list[str]:
    return [f"{emu.base_url}/samples/{name}" for name in ("landscape.png", "portrait.jpg", "square.webp")]


def test_a_rerun_submits_nothing_when_every_file_is_there(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    sources = _sources(emu)
    first = run_dag(MAPPED, images=sources, output_path=str(tmp_path))
    assert first.state == "success"
    before = [xcom(first, "upscale", map_index=i)[0] for i in range(3)]
    assert emu.stats()["accepted_submissions"] == 3

    again = run_dag(MAPPED, images=sources, output_path=str(tmp_path))

    assert again.state == "success"
    assert emu.stats()["accepted_submissions"] == 3, "the re-run submitted again"
    for map_index, earlier in enumerate(before):
        (record,) = xcom(again, "upscale", map_index=map_index)
        assert record == {
            "task_id": None,
            "image": sources[map_index],
            "image_url": None,
            "image_type": "jpeg",
            "image_url_ttl": None,
            "completed_at": None,
            "path": earlier["path"],
            "reused": True,
        }
        assert earlier["reused"] is False
        assert xcom(again, "upscale", key="task_ids", map_index=map_index) == []


def test_only_the_image_whose_file_is_missing_or_broken_is_submitted_again(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    sources = _sources(emu)
    first = run_dag(MAPPED, images=sources, output_path=str(tmp_path))
    paths = [Path(xcom(first, "upscale", map_index=i)[0]["path"].removeprefix("file://")) for i in range(3)]
    paths[1].unlink()
    paths[2].write_bytes(paths[2].read_bytes()[:1000])  # a file cut short, as by a crash

    again = run_dag(MAPPED, images=sources, output_path=str(tmp_path))

    assert again.state == "success"
    assert emu.stats()["submissions_by_image"] == {sources[0]: 1, sources[1]: 2, sources[2]: 2}
    reused = [xcom(again, "upscale", map_index=i)[0]["reused"] for i in range(3)]
    assert reused == [True, False, False]
    assert all(path.stat().st_size > 1000 for path in paths)


def test_reuse_existing_false_upscales_every_image_anew(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    image = [f"{emu.base_url}/samples/landscape.png"]
    assert run_dag("novita_test_upscale_no_reuse", images=image, output_path=str(tmp_path)).state == "success"

    again = run_dag("novita_test_upscale_no_reuse", images=image, output_path=str(tmp_path))

    assert again.state == "success"
    assert emu.stats()["accepted_submissions"] == 2
    (record,) = xcom(again, "upscale")
    assert record["reused"] is False
    assert record["task_id"] is not None
