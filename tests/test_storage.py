"""
Persisting results: where they may go, what they are called, and what a download must prove.

Downloads are served by ``httpx.MockTransport``; files are written to ``tmp_path``.
"""

from __future__ import annotations

import gzip
import logging
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from airflow.sdk import ObjectStoragePath
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_novita import storage
from airflow_provider_novita.emulator import EmulatorServer
from airflow_provider_novita.exceptions import NovitaError
from airflow_provider_novita.models import ResultImage, TaskResult, TaskStatus
from airflow_provider_novita.storage import (
    Destination,
    existing_results,
    output_name,
    output_root,
    persist_results,
    result_paths,
    url_answers,
)
from tests.forward_proxy import ForwardProxy
from tests.s3 import S3Bucket

RECORD = ("task-7", "jpeg")
SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
# Repetitive, so that its gzip encoding is much shorter and a length mix-up cannot go unnoticed.
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
SECRET = "X-Amz-Signature=secret"
RESULT_URL = f"https://results.test/out/result.png?{SECRET}"


def record(task_id: str = "task-7", image_type: str = "png") -> TaskResult:
    return TaskResult(task_id, TaskStatus.SUCCEED, images=(ResultImage(RESULT_URL, image_type),))


def serving(body: bytes = IMAGE, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    """
    Serves ``body`` as a network transport would: as a stream, with the headers given.

    Not as ``Response(content=...)``: httpx reads and decodes such a body before the client sees it,
    so no byte would count as received on the wire.
    """
    headers = headers or {"Content-Length": str(len(body))}
    return httpx.MockTransport(
        lambda request: httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))
    )


def persist(
    results: list[TaskResult], output_path: str | ObjectStoragePath, transport: httpx.BaseTransport
) -> list[str]:
    """Persists ``results`` as the operator does; returns the paths."""
    return persist_results(
        results,
        [Destination(None, "4k", position) for position in range(len(results))],
        output_path,
        map_index=-1,
        transport=transport,
    )


def tree(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def assert_safe(name: str) -> None:
    assert SAFE_NAME.fullmatch(name), name
    assert ".." not in name
    assert not any(char in name for char in "/\\\x00")
    assert not any(ord(char) < 32 or ord(char) == 127 for char in name)


# --- output_path ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_path", "protocol", "folder"),
    [
        ("/data/upscaled", "file", "/data/upscaled"),
        ("  /data/upscaled\n", "file", "/data/upscaled"),
        # Not a URI: a local folder whose name has a colon in it.
        ("/data/with://in/the/name", "file", "/data/with:/in/the/name"),
        ("file:///data/upscaled", "file", "/data/upscaled"),
        (" memory://bucket/up ", "memory", "/bucket/up"),
    ],
)
def test_a_plain_absolute_path_means_the_local_folder_and_a_uri_stays_as_it_is(
    given_path: str, protocol: str, folder: str
) -> None:
    """
    What matters is the filesystem and the folder in it, not how the path prints.

    universal_pathlib 0.2 (Airflow 3.0, 3.1) prints ``memory:///bucket/up`` and collapses the ``//``
    of a local folder's name, which the operating system does anyway; 0.3 (Airflow 3.2+) prints
    ``memory://bucket/up`` and keeps the ``//``. Both name the same place.
    """
    root = output_root(given_path)
    assert root.protocol == protocol
    assert posixpath.normpath(root.path) == folder


def test_a_folder_named_with_a_colon_and_slashes_is_a_local_folder(tmp_path: Path) -> None:
    """The file lands in the folder so named on this machine, on every Airflow version."""
    (path,) = persist([record()], f"{tmp_path}/with://in/the/name", serving())
    assert (tmp_path / "with:" / "in" / "the" / "name" / Path(path).name).read_bytes() == IMAGE


def test_an_object_storage_path_is_taken_as_it_is() -> None:
    path = ObjectStoragePath("memory://bucket/up")
    assert output_root(path) is path


@pytest.mark.parametrize("bad", ["", "   ", "data/out", "./out", "~/out", "s3:bucket/prefix"])
def test_a_relative_or_empty_output_path_is_refused_with_what_is_allowed(bad: str) -> None:
    with pytest.raises(ValueError, match="output_path") as info:
        output_root(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "absolute path" in message
    assert "file:///data/out" in message
    assert "s3://conn@bucket/prefix" in message


@pytest.mark.parametrize("scheme", ["file", "local"])
def test_a_local_folder_that_does_not_exist_yet_is_created(tmp_path: Path, scheme: str) -> None:
    (path,) = persist([record()], f"{scheme}://{tmp_path}/new/folder", serving())
    assert (tmp_path / "new" / "folder" / Path(path).name).read_bytes() == IMAGE


def test_results_under_a_plain_absolute_path_are_saved_as_under_its_file_uri(tmp_path: Path) -> None:
    (plain,) = persist([record()], str(tmp_path / "plain" / "out"), serving())
    (uri,) = persist([record()], f"file://{tmp_path}/uri/out", serving())
    name = Path(uri).name
    assert plain == f"file://{tmp_path}/plain/out/{name}"
    assert (tmp_path / "plain" / "out" / name).read_bytes() == IMAGE


def test_a_relative_output_path_downloads_nothing(tmp_path: Path) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, stream=httpx.ByteStream(IMAGE))

    with pytest.raises(ValueError, match="output_path"):
        persist([record()], "out", httpx.MockTransport(handler))
    assert requests == []


# --- downloads ------------------------------------------------------------------------------------


def test_a_gzip_encoded_result_is_saved_decoded_and_complete(tmp_path: Path) -> None:
    compressed = gzip.compress(IMAGE)
    assert len(compressed) < len(IMAGE)
    headers = {"Content-Encoding": "gzip", "Content-Length": str(len(compressed))}
    (path,) = persist([record()], str(tmp_path), serving(compressed, headers))
    assert Path(path.removeprefix("file://")).read_bytes() == IMAGE


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_a_truncated_download_is_rejected_and_leaves_no_file(tmp_path: Path, encoding: str) -> None:
    body = gzip.compress(IMAGE) if encoding == "gzip" else IMAGE
    headers = {"Content-Encoding": encoding, "Content-Length": str(len(body))}
    with pytest.raises(NovitaError) as info:
        persist([record()], str(tmp_path), serving(body[: len(body) // 2], headers))
    message = str(info.value)
    assert f"broke off after {len(body) // 2} of {len(body)} bytes" in message
    assert "Novita task task-7" in message
    assert "results.test" in message
    assert SECRET not in message
    assert list(tmp_path.iterdir()) == []


def test_a_broken_connection_names_task_and_host_but_never_the_query_string(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError(f"connection lost while reading {request.url}")

    with pytest.raises(NovitaError) as info:
        persist([record("0000-broken")], str(tmp_path), httpx.MockTransport(handler))
    message = str(info.value)
    assert "Novita task 0000-broken" in message
    assert "results.test" in message
    assert "ReadError" in message
    assert "secret" not in message
    assert "https://results.test/out/result.png?…" in message, "the cut query string is marked"
    assert list(tmp_path.iterdir()) == []


# Epoch seconds the download errors below are raised at: 2025-11-24T17:01:00Z.
NOW = 1764003660.0


@pytest.mark.parametrize(
    ("completed_at", "age"),
    [
        (None, ""),
        # Finished 2h 1m ago, its URL good for an hour: expired an hour ago.
        (NOW - 7260, "; the task finished 2h 1m ago and its URL expired at 2025-11-24T16:00:00Z"),
        # Its URL's last second is now.
        (NOW - 3600, "; the task finished 1h 0m ago and its URL expired at 2025-11-24T17:01:00Z"),
        (NOW - 307, "; the task finished 5m 7s ago and its URL expires at 2025-11-24T17:55:53Z"),
    ],
)
def test_a_refused_download_names_the_status_the_results_age_and_its_urls_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, completed_at: float | None, age: str
) -> None:
    """What tells a user whether the presigned URL simply expired before the download."""
    monkeypatch.setattr(storage, "time", SimpleNamespace(time=lambda: NOW))
    image = ResultImage(RESULT_URL, "png", 3600)
    result = TaskResult("task-7", TaskStatus.SUCCEED, images=(image,), completed_at=completed_at)
    with pytest.raises(NovitaError) as info:
        persist([result], str(tmp_path), httpx.MockTransport(lambda request: httpx.Response(403)))
    assert str(info.value) == (
        "Result of Novita task task-7 could not be downloaded from https://results.test/out/result.png: "
        f"HTTP 403{age}"
    )
    assert list(tmp_path.iterdir()) == []


class ChunkedBody(httpx.SyncByteStream):
    """A body that arrives in several pieces, as a large one does from the network."""

    def __init__(self, body: bytes, pieces: int) -> None:
        self.body, self.pieces = body, pieces

    def __iter__(self) -> Iterator[bytes]:
        step = -(-len(self.body) // self.pieces)
        for start in range(0, len(self.body), step):
            yield self.body[start : start + step]


def test_the_size_logged_for_a_result_of_several_chunks_is_the_whole_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = IMAGE * 200  # 3.2 MB: more than three chunks of 1 MiB
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, headers={"Content-Length": str(len(body))}, stream=ChunkedBody(body, 7)
        )
    )
    with caplog.at_level(logging.INFO, logger="airflow_provider_novita"):
        (path,) = persist([record()], str(tmp_path), transport)
    assert Path(path.removeprefix("file://")).read_bytes() == body
    assert [r.getMessage() for r in caplog.records if r.name == "airflow_provider_novita.storage"] == [
        f"Saved Novita task task-7 result to {path} ({len(body)} bytes)"
    ]


def test_a_result_url_that_redirects_is_followed(tmp_path: Path) -> None:
    """CDNs answer a result URL with a redirect to where the image is."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "results.test":
            return httpx.Response(302, headers={"Location": "https://cdn.test/moved/result.png"})
        return httpx.Response(
            200, headers={"Content-Length": str(len(IMAGE))}, stream=httpx.ByteStream(IMAGE)
        )

    transport = httpx.MockTransport(handler)
    (path,) = persist([record()], str(tmp_path), transport)
    assert Path(path.removeprefix("file://")).read_bytes() == IMAGE
    assert url_answers(RESULT_URL, transport=transport) is True


def test_downloads_and_url_checks_give_up_on_a_silent_server(tmp_path: Path) -> None:
    """A hung result host fails the task after a bounded wait instead of holding the worker forever."""
    timeouts: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(
            200, headers={"Content-Length": str(len(IMAGE))}, stream=httpx.ByteStream(IMAGE)
        )

    persist([record()], str(tmp_path), httpx.MockTransport(handler))
    url_answers(RESULT_URL, transport=httpx.MockTransport(handler))
    assert timeouts == [
        {"connect": 10.0, "read": 60.0, "write": 60.0, "pool": 60.0},
        {"connect": 10.0, "read": 10.0, "write": 10.0, "pool": 10.0},
    ]


def test_downloads_over_the_network_follow_redirects_and_give_up_on_a_silent_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client made without a test transport, as in production, behaves as the one above."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    timeouts: list[dict[str, float]] = []

    def network(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        if request.url.host == "results.test":
            return httpx.Response(302, headers={"Location": "https://cdn.test/moved/result.png"})
        return httpx.Response(
            200, headers={"Content-Length": str(len(IMAGE))}, stream=httpx.ByteStream(IMAGE)
        )

    class OverAStandInNetwork(httpx.Client):
        def __init__(self, **options: Any) -> None:
            super().__init__(**options, transport=httpx.MockTransport(network))

    monkeypatch.setattr("airflow_provider_novita.storage.httpx.Client", OverAStandInNetwork)
    (path,) = persist_results(
        [record()],
        [Destination(None, "4k", 0)],
        str(tmp_path),
        map_index=-1,
    )
    assert Path(path.removeprefix("file://")).read_bytes() == IMAGE
    assert url_answers(RESULT_URL) is True
    download = {"connect": 10.0, "read": 60.0, "write": 60.0, "pool": 60.0}
    check = {"connect": 10.0, "read": 10.0, "write": 10.0, "pool": 10.0}
    assert timeouts == [download, download, check, check]


def test_a_result_saved_to_object_storage_carries_its_image_content_type(s3: S3Bucket) -> None:
    """Served from S3 as an image, not as a download of unknown bytes."""
    (path,) = persist([record(image_type="png")], s3.uri("out"), serving())
    body, content_type = s3.get(path.split(f"{s3.name}/", 1)[1])
    assert body == IMAGE
    assert content_type == "image/png"


# --- file names -----------------------------------------------------------------------------------


def test_name_is_stem_resolution_digest_and_extension() -> None:
    name = output_name(*RECORD, Destination("https://img.test/photos/cat.png?x=1", "4k", 0), map_index=-1)
    stem, resolution, rest = name.split("-")
    assert (stem, resolution) == ("cat", "4k")
    digest, extension = rest.split(".")
    assert len(digest) == 8
    assert extension == "jpg"


def test_same_inputs_give_the_same_name() -> None:
    destination = Destination("https://img.test/cat.png", "2k", 3)
    assert output_name(*RECORD, destination, 1) == output_name(*RECORD, destination, 1)


@pytest.mark.parametrize(
    ("other", "map_index"),
    [
        (Destination("https://img.test/cat.png", "2k", 1), -1),  # same image, next position in the batch
        (Destination("https://img.test/cat.png", "2k", 0), 4),  # same image in another mapped task
        (Destination("https://other.test/cat.png", "2k", 0), -1),  # another image with the same file name
    ],
)
def test_names_differ_where_files_must_not_collide(other: Destination, map_index: int) -> None:
    first = output_name(*RECORD, Destination("https://img.test/cat.png", "2k", 0), -1)
    assert output_name(*RECORD, other, map_index) != first


def test_unsafe_characters_are_replaced_and_the_sensor_omits_the_resolution() -> None:
    name = output_name(
        "t",
        "webp",
        Destination("https://img.test/My%20Photo%20(1).PNG", None, 0),
        -1,
    )
    assert name.startswith("My_Photo_1-")
    assert name.count("-") == 1
    assert name.endswith(".webp")


def test_without_a_source_the_stem_is_the_novita_task_id() -> None:
    assert output_name(*RECORD, Destination(None, "8k", 0), -1).startswith("task-7-8k-")


@pytest.mark.parametrize(
    ("source", "stem"),
    [
        ("https://img.test/photos/cat.v2.png", "cat.v2"),  # only the last extension goes
        ("https://img.test/albums/BOX/", "BOX"),  # a trailing slash names the last segment
        ("https://img.test", "image"),  # no file name at all
        ("https://cdn.test/?id=42", "image"),  # only a query: never the Novita task id
    ],
)
def test_the_stem_is_the_sources_file_name_without_its_extension(source: str, stem: str) -> None:
    assert output_name(*RECORD, Destination(source, None, 0), -1).rsplit("-", 1)[0] == stem


def test_a_source_is_named_without_the_novita_task_id_whatever_novita_answered() -> None:
    destination = Destination("https://cdn.test/?id=42", "2k", 0)
    assert output_name("task-7", "png", destination, -1) == output_name("task-8", "png", destination, -1)


@pytest.mark.parametrize(
    ("task_id", "stem"),
    [
        ("XRAY-X", "XRAY-X"),
        # Cut at 80 characters right after a separator, which goes too.
        ("a" * 79 + "-b", "a" * 79),
    ],
)
def test_a_stem_keeps_its_letters_and_loses_separators_at_its_ends(task_id: str, stem: str) -> None:
    assert output_name(task_id, "png", Destination(None, None, 0), -1).rsplit("-", 1)[0] == stem


HOSTILE_TASK_IDS = [
    "../../../etc/passwd",
    "..",
    ".",
    "a/b\\c",
    "\x00evil",
    "evil\x00.png",
    "x" * 10_000,
    "日本",
    "..\\..\\windows",
    "line\nbreak\ttab\x7f",
    " ",
    "-._",
]


@pytest.mark.parametrize("task_id", HOSTILE_TASK_IDS)
def test_a_hostile_task_id_becomes_a_safe_stem(task_id: str) -> None:
    name = output_name(task_id, "png", Destination(None, None, 0), -1)
    assert_safe(name)
    stem = name.rsplit("-", 1)[0]
    assert len(stem) <= 80


@pytest.mark.parametrize("task_id", ["..", "日本", "\x00", "-._", "/"])
def test_a_task_id_with_nothing_safe_in_it_falls_back_to_image(task_id: str) -> None:
    name = output_name(task_id, "png", Destination(None, None, 0), -1)
    assert re.fullmatch(r"image-[0-9a-f]{8}\.png", name)


def test_the_task_id_keeps_its_safe_characters_and_loses_runs_of_dots() -> None:
    name = output_name("../a..b/c", "png", Destination(None, None, 0), -1)
    assert name.startswith("a.b_c-")


@pytest.mark.parametrize(
    ("image_type", "extension"),
    [
        ("jpeg", "jpg"),
        ("jpg", "jpg"),
        ("image/jpeg", "jpg"),
        (" JPEG ", "jpg"),
        ("png", "png"),
        ("Image/PNG", "png"),
        ("webp", "webp"),
        ("image/webp\n", "webp"),
        ("", "bin"),
        (None, "bin"),
        ("gif", "bin"),
        ("../../etc/passwd", "bin"),
        ("png/../x", "bin"),
        ("png\x00", "bin"),
        ("p.n.g", "bin"),
    ],
)
def test_the_extension_is_a_known_format_or_bin(image_type: str | None, extension: str) -> None:
    name = output_name("t", image_type, Destination(None, None, 0), -1)
    assert_safe(name)
    assert name.rsplit(".", 1)[1] == extension


@settings(derandomize=True, database=None)
@given(
    task_id=st.text(),
    image_type=st.one_of(st.none(), st.text()),
    resolution=st.one_of(st.none(), st.text()),
)
def test_any_task_id_image_type_and_resolution_give_a_safe_name(
    task_id: str, image_type: str | None, resolution: str | None
) -> None:
    name = output_name(task_id, image_type, Destination(None, resolution, 0), -1)
    assert SAFE_NAME.fullmatch(name), name
    assert ".." not in name


def test_hostile_names_are_written_only_inside_output_path(tmp_path: Path) -> None:
    outside_before = tree(tmp_path.parent) - tree(tmp_path)
    results = [
        record(task_id, image_type)
        for task_id, image_type in [
            ("../escaped", "png"),
            ("../../../etc/passwd", "../../x"),
            ("a/b\\c", "png/../x"),
            ("..", "jpeg"),
        ]
    ]
    paths = persist(results, str(tmp_path), serving())
    assert tree(tmp_path.parent) - tree(tmp_path) == outside_before
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted(Path(p).name for p in paths)
    stems_and_extensions = {name.rsplit("-", 2)[0]: name.rsplit(".", 1)[1] for name in names}
    assert stems_and_extensions == {"escaped": "png", "etc_passwd": "bin", "a_b_c": "bin", "image": "jpg"}
    assert all(path.read_bytes() == IMAGE for path in tmp_path.iterdir())


# --- whether a result URL still answers -----------------------------------------------------------


class UnreadBody(httpx.SyncByteStream):
    """A body that records whether anyone read it."""

    def __init__(self) -> None:
        self.read = False

    def __iter__(self) -> Iterator[bytes]:
        self.read = True
        yield IMAGE


@pytest.mark.parametrize(("status", "answers"), [(200, True), (206, True), (403, False), (404, False)])
def test_a_result_url_answers_when_its_first_byte_can_be_fetched(status: int, answers: bool) -> None:
    requests: list[httpx.Request] = []
    body = UnreadBody()

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(status, stream=body)

    assert url_answers(RESULT_URL, transport=httpx.MockTransport(handler)) is answers
    (request,) = requests
    assert request.headers["Range"] == "bytes=0-0"
    assert "Authorization" not in request.headers
    assert body.read is False


def test_a_result_url_that_cannot_be_reached_does_not_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}")

    assert url_answers(RESULT_URL, transport=httpx.MockTransport(handler)) is False


def test_a_result_url_that_is_not_a_url_does_not_answer() -> None:
    assert url_answers("https://results.test:notaport/x?sig=1", transport=serving()) is False


@pytest.mark.parametrize("fails", [False, True])
def test_asking_a_result_url_logs_its_host_but_never_its_query_string(
    caplog: pytest.LogCaptureFixture, fails: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if fails:
            raise httpx.ConnectError(f"cannot connect to {request.url}")
        return httpx.Response(403)

    with caplog.at_level(logging.DEBUG, logger="airflow_provider_novita"):
        url_answers(RESULT_URL, transport=httpx.MockTransport(handler))
    # httpx logs every request with its full URL at INFO; Airflow sets that logger to WARN.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("airflow_provider_novita")]
    where = "https://results.test/out/result.png"
    assert ours == [
        f"Result URL {where} did not answer: ConnectError: cannot connect to {where}?…"
        if fails
        else f"Result URL {where} answered HTTP 403"
    ]


def _encoded(image_format: str) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(buffer, format=image_format)
    return buffer.getvalue()


class TestFilesARerunMayReuse:
    """``existing_results``: what counts as a complete file from an earlier run, and what finding it costs."""

    DESTINATION = Destination("https://example.com/photos/cat.jpg?sig=1", "2k", 0)

    def existing(
        self, root: Path, image_type: str, destination: Destination = DESTINATION, map_index: int = 3
    ) -> str | None:
        """What ``existing_results`` finds for one destination: its URI, or None."""
        found = existing_results(str(root), image_type, [destination], map_index)
        assert set(found) <= {0}
        return found.get(0)

    def saved(self, root: Path, image_type: str, content: bytes) -> Path:
        name = output_name("", image_type, self.DESTINATION, map_index=3)
        path = root / name
        path.write_bytes(content)
        return path

    @pytest.mark.parametrize(
        ("image_type", "pil_format"), [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
    )
    def test_a_whole_image_under_the_deterministic_name_is_reused(
        self, tmp_path: Path, image_type: str, pil_format: str
    ) -> None:
        path = self.saved(tmp_path, image_type, _encoded(pil_format))

        assert self.existing(tmp_path, image_type) == f"file://{path}"

    @pytest.mark.parametrize(
        ("image_type", "pil_format"), [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
    )
    @pytest.mark.parametrize("keep", [0.0, 0.5, 0.9])
    def test_an_empty_or_cut_file_is_not(
        self, tmp_path: Path, image_type: str, pil_format: str, keep: float
    ) -> None:
        whole = _encoded(pil_format)
        self.saved(tmp_path, image_type, whole[: int(len(whole) * keep)])

        assert self.existing(tmp_path, image_type) is None

    def test_a_leftover_partial_file_is_not(self, tmp_path: Path) -> None:
        name = output_name("", "png", self.DESTINATION, map_index=3)
        (tmp_path / f".{name}.0a1b2c3d.partial").write_bytes(_encoded("PNG"))

        assert self.existing(tmp_path, "png") is None

    def test_a_file_of_another_format_under_the_name_is_not(self, tmp_path: Path) -> None:
        self.saved(tmp_path, "png", _encoded("JPEG"))

        assert self.existing(tmp_path, "png") is None

    def test_another_position_or_map_index_is_another_file(self, tmp_path: Path) -> None:
        self.saved(tmp_path, "png", _encoded("PNG"))

        assert self.existing(tmp_path, "png", Destination(self.DESTINATION.source_image, "2k", 1)) is None
        assert self.existing(tmp_path, "png", self.DESTINATION, 4) is None

    @pytest.mark.parametrize("padding", [0, 14])
    def test_a_jpeg_may_end_in_a_few_bytes_of_padding(self, tmp_path: Path, padding: int) -> None:
        self.saved(tmp_path, "jpeg", _encoded("JPEG") + b"\x00" * padding)

        assert self.existing(tmp_path, "jpeg") is not None

    @pytest.mark.parametrize("padding", [15, 40])
    def test_a_jpeg_with_more_after_its_end_marker_is_not(self, tmp_path: Path, padding: int) -> None:
        """An end marker well before the end is not the file's: an embedded image's, or a cut file's."""
        self.saved(tmp_path, "jpeg", _encoded("JPEG") + b"\x00" * padding)

        assert self.existing(tmp_path, "jpeg") is None

    def test_a_file_of_a_format_that_cannot_be_checked_is_not(self, tmp_path: Path) -> None:
        self.saved(tmp_path, "gif", b"GIF89a" + bytes(100))

        assert self.existing(tmp_path, "gif") is None

    def test_a_folder_under_the_name_is_not(self, tmp_path: Path) -> None:
        (tmp_path / output_name("", "png", self.DESTINATION, map_index=3)).mkdir()

        assert self.existing(tmp_path, "png") is None

    def test_a_missing_folder_means_nothing_to_reuse(self, tmp_path: Path) -> None:
        assert self.existing(tmp_path / "not-yet", "png") is None

    @pytest.mark.parametrize(
        "source",
        [
            "https://example.com/photos/cat.jpg?sig=1",
            "https://cdn.example.com/?id=42",  # only a query
            "https://cdn.example.com",  # a bare host
            "https://cdn.example.com/%E5%86%99%E7%9C%9F.png",  # 写真.png
            "https://cdn.example.com/写真.png",
            "https://cdn.example.com/.../..png",  # names of dots
            "https://cdn.example.com/albums/summer/",  # a trailing slash
            "https://cdn.example.com/" + "n" * 2000 + ".png",
            "s3://aws_default@bucket/",
        ],
    )
    def test_a_saved_result_is_found_again_with_the_arguments_that_saved_it(
        self, tmp_path: Path, source: str
    ) -> None:
        """Through the real path: what persist_results wrote, existing_results finds, knowing no task id."""
        destinations = [Destination(source, "2k", position) for position in range(2)]
        paths = persist_results(
            [record(task_id="task-9", image_type="png"), record(task_id="task-10", image_type="png")],
            destinations,
            str(tmp_path),
            map_index=3,
            transport=serving(_encoded("PNG")),
        )

        assert len(set(paths)) == 2, "two positions of one source must not share a file"
        assert existing_results(str(tmp_path), "png", destinations, 3) == dict(enumerate(paths))
        assert [
            str(path) for path in result_paths(output_root(str(tmp_path)), "png", destinations, 3)
        ] == paths
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
            path.rsplit("/", 1)[1] for path in paths
        )

    def test_several_destinations_are_found_with_one_listing_and_only_their_files_read(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        A batch of any size costs one listing of the folder; only a file listed under an expected name
        with a size is opened, and nothing is asked about a file one at a time (no stat, no exists).
        """
        source = self.DESTINATION.source_image
        destinations = [Destination(source, "2k", position) for position in range(6)]
        image = _encoded("PNG")
        for position, content in [(0, image), (2, image), (3, image[:-20]), (4, b""), (5, image)]:
            (tmp_path / output_name("", "png", destinations[position], map_index=3)).write_bytes(content)
        (tmp_path / "unrelated.png").write_bytes(image)
        (tmp_path / "subfolder").mkdir()

        fs = type(ObjectStoragePath(f"file://{tmp_path}").fs)
        calls: list[str] = []  # what storage asked the filesystem, not what the filesystem did for it
        inside: list[str] = []
        for method in ("ls", "info", "exists", "isfile", "isdir", "size", "open", "_open"):
            original = getattr(fs, method)

            def counted(*args: Any, _method: str = method, _original: Any = original, **kwargs: Any) -> Any:
                if not inside:
                    calls.append(_method)
                inside.append(_method)
                try:
                    return _original(*args, **kwargs)
                finally:
                    inside.pop()

            monkeypatch.setattr(fs, method, counted)

        found = existing_results(str(tmp_path), "png", destinations, 3)

        expected = result_paths(output_root(str(tmp_path)), "png", destinations, 3)
        assert found == {position: str(expected[position]) for position in (0, 2, 5)}
        # Position 1 is not there, 3 is cut short (read, refused), 4 is empty (never read).
        assert sorted(calls) == ["ls"] + ["open"] * 4, calls


class TestBehindAProxy:
    """Downloads and URL checks go through the Novita connection's proxy, else the environment's."""

    HOST = "results.proxied.test"

    @pytest.fixture(autouse=True)
    def only_this_tests_proxy(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(name.lower(), raising=False)

    @pytest.mark.parametrize("given", ["extra", "environment"])
    def test_a_result_on_a_host_only_the_proxy_resolves_is_saved(
        self,
        given: str,
        novita_emulator: EmulatorServer,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        with ForwardProxy(tmp_path, hosts={self.HOST: "127.0.0.1"}) as proxy:
            url = f"http://{self.HOST}:{novita_emulator.port}/samples/landscape.png"
            if given == "environment":
                monkeypatch.setenv("HTTP_PROXY", proxy.url)
            result = TaskResult("task-7", TaskStatus.SUCCEED, images=(ResultImage(url, "png", 3600),))
            (path,) = persist_results(
                [result],
                [Destination(url, "2k", 0)],
                f"file://{tmp_path}/out",
                map_index=-1,
                proxy=proxy.url if given == "extra" else None,
            )
            assert url_answers(url, proxy=proxy.url if given == "extra" else None)
            assert [entry["target"] for entry in proxy.requests()] == [url, url]
        assert ObjectStoragePath(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_without_the_proxy_the_result_host_does_not_answer(self, novita_emulator: EmulatorServer) -> None:
        assert not url_answers(f"http://{self.HOST}:{novita_emulator.port}/samples/landscape.png")
