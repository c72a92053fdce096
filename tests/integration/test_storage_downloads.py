"""
Result downloads over a real loopback socket: what httpx counts on the wire, not what a mock claims.

A tiny HTTP server serves one image plainly, gzip-encoded, cut off halfway, and by byte range.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_novita.exceptions import NovitaError
from airflow_provider_novita.models import ResultImage, TaskResult, TaskStatus
from airflow_provider_novita.storage import Destination, persist_results, url_answers

if TYPE_CHECKING:
    from collections.abc import Iterator

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 512
COMPRESSED = gzip.compress(IMAGE)


class ResultHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/gzip.png":
            self.answer(200, COMPRESSED, {"Content-Encoding": "gzip"})
        elif path == "/cut.png":
            self.answer(200, IMAGE[: len(IMAGE) // 2], {"Content-Length": str(len(IMAGE))})
        elif path == "/plain.png" and self.headers.get("Range") == "bytes=0-0":
            self.answer(206, IMAGE[:1], {"Content-Range": f"bytes 0-0/{len(IMAGE)}"})
        elif path == "/plain.png":
            self.answer(200, IMAGE, {})
        else:
            self.answer(403, b"expired", {})

    def answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on what the provider reports, not on the server's access log."""


@pytest.fixture
def results_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ResultHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def persist(url: str, output_path: str) -> list[str]:
    image = ResultImage(f"{url}?X-Amz-Signature=secret", "png")
    return persist_results(
        [TaskResult("task-1", TaskStatus.SUCCEED, images=(image,))],
        [Destination(None, "2k", 0)],
        output_path,
        map_index=-1,
    )


def test_a_gzip_encoded_result_is_saved_decoded_under_a_plain_path(
    results_server: str, tmp_path: Path
) -> None:
    (path,) = persist(f"{results_server}/gzip.png", str(tmp_path / "out"))
    assert path.startswith(f"file://{tmp_path}/out/task-1-2k-")
    assert Path(path.removeprefix("file://")).read_bytes() == IMAGE


def test_a_connection_cut_mid_body_is_rejected_and_leaves_no_file(
    results_server: str, tmp_path: Path
) -> None:
    with pytest.raises(NovitaError) as info:
        persist(f"{results_server}/cut.png", str(tmp_path))
    message = str(info.value)
    assert "Novita task task-1" in message
    assert results_server.removeprefix("http://") in message
    assert "secret" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("path", "answers"), [("/plain.png", True), ("/gzip.png", True), ("/gone.png", False)]
)
def test_a_result_url_answers_while_it_serves_its_image(
    results_server: str, path: str, answers: bool
) -> None:
    assert url_answers(f"{results_server}{path}?X-Amz-Signature=secret") is answers


def test_a_result_url_on_a_closed_port_does_not_answer() -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), ResultHandler)
    port = closed.server_address[1]
    closed.server_close()
    assert url_answers(f"http://127.0.0.1:{port}/plain.png", timeout=2.0) is False
