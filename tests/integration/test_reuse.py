"""
Re-runs pay only for what is missing: ``reuse_existing`` with ``output_path``, run with ``dag.test()``.

Each ``dag.test()`` is a new run of the same DAG writing to the same folder, as a cleared run or a
backfill would; the emulator's counters prove what was submitted. (The real cleared run, through
Airflow's REST API on a Celery deployment, is in tests/cluster.)
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_novita.emulator.samples import build_samples
from tests.integration.conftest import sample_sources, xcom

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow_provider_novita.emulator import EmulatorServer

MAPPED = "novita_test_mapped"


def test_a_rerun_submits_nothing_when_every_file_is_there(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path
) -> None:
    emu = emulator()
    sources = sample_sources(emu)
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
    sources = sample_sources(emu)
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


class _Catalogue(BaseHTTPRequestHandler):
    """A product catalogue's image server: the same sample image at any path and query."""

    def do_GET(self) -> None:
        sample = build_samples()["landscape.png"]
        self.send_response(200)
        self.send_header("Content-Type", sample.content_type)
        self.send_header("Content-Length", str(len(sample.content)))
        self.end_headers()
        self.wfile.write(sample.content)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def catalogue() -> Iterator[str]:
    """The base URL of a :class:`_Catalogue` on a free loopback port, stopped after the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Catalogue)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_rerun_finds_the_files_of_sources_whose_url_gives_no_usable_name(
    emulator: Callable[..., EmulatorServer], run_dag: Callable[..., Any], tmp_path: Path, catalogue: str
) -> None:
    """A file's name never depends on Novita's answer, so the re-run finds every file it looks for."""
    emu = emulator()
    sources = [
        f"{catalogue}/?id=42",  # only a query, as product catalogues serve images
        catalogue,  # a bare host
        f"{catalogue}/%E5%86%99%E7%9C%9F.png",  # 写真.png
        f"{catalogue}/....png",  # a name of dots
        f"{catalogue}/albums/summer/",  # a trailing slash
        f"{catalogue}/{'n' * 2000}.png",
        f"{catalogue}/?id=42",  # the first source again, at another position
    ]
    first = run_dag("novita_test_upscale_deferrable", images=sources, output_path=str(tmp_path))
    assert first.state == "success"
    assert emu.stats()["accepted_submissions"] == len(sources)
    files = sorted(tmp_path.iterdir())
    assert len(files) == len(sources)

    again = run_dag("novita_test_upscale_deferrable", images=sources, output_path=str(tmp_path))

    assert again.state == "success"
    assert emu.stats()["accepted_submissions"] == len(sources), "the re-run submitted again"
    assert sorted(tmp_path.iterdir()) == files, "the re-run wrote new files"
    records = xcom(again, "upscale")
    assert [record["reused"] for record in records] == [True] * len(sources)
    assert [record["path"] for record in records] == [record["path"] for record in xcom(first, "upscale")]
