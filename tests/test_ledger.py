"""LedgerChunks: a retry's memory in output_path before Airflow 3.3, on a local folder and on S3."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_novita.ledger import LEDGER_PREFIX, LedgerChunks
from airflow_provider_novita.retry_memory import RetryMemory
from tests.fakes import FakeTaskInstance

if TYPE_CHECKING:
    from pathlib import Path

    from tests.s3 import S3Bucket

NAME = "0\nhttps://bucket.test/a.png?X-Amz-Signature=s3cr3t\n2k\njpeg"


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStoragePath:
    if request.param == "local":
        return ObjectStoragePath(f"file://{tmp_path}/out/")
    bucket: S3Bucket = request.getfixturevalue("s3")
    return ObjectStoragePath(bucket.uri("out/"))


def stored(root: ObjectStoragePath) -> dict[str, str]:
    """Every object under ``root``, by its path relative to ``root``, with its text."""
    base = root.path.rstrip("/") + "/"
    return {found.removeprefix(base): root.fs.cat_file(found).decode() for found in root.fs.find(root.path)}


def memory(root: ObjectStoragePath, map_index: int = -1, chunk_size: int = 2) -> RetryMemory:
    return RetryMemory(LedgerChunks(root, FakeTaskInstance(map_index=map_index)), chunk_size)


def test_a_later_try_reads_what_an_earlier_one_recorded(root: ObjectStoragePath) -> None:
    first = memory(root)
    first.record(NAME, {"task_id": "t-1"})
    first.record("1\nother", {"uncertain": "ReadTimeout"})
    first.record("2\nthird", {"task_id": "t-3"})
    first.flush()

    assert memory(root).recall([NAME, "1\nother", "2\nthird", "3\nnever submitted"]) == [
        {"task_id": "t-1"},
        {"uncertain": "ReadTimeout"},
        {"task_id": "t-3"},
        {},
    ]


def test_a_retry_appends_chunks_and_its_records_replace_earlier_ones(root: ObjectStoragePath) -> None:
    first = memory(root)
    first.record(NAME, {"uncertain": "ReadTimeout"})
    first.flush()
    retry = memory(root)
    assert retry.recall([NAME]) == [{"uncertain": "ReadTimeout"}]
    retry.record(NAME, {"task_id": "t-2"})
    retry.flush()

    assert sorted(key.rsplit("/", 1)[1] for key in stored(root)) == ["chunk-0000.json", "chunk-0001.json"]
    assert memory(root).recall([NAME]) == [{"task_id": "t-2"}]


def test_a_first_try_finds_nothing(root: ObjectStoragePath) -> None:
    assert memory(root).recall([NAME]) == [{}]


def test_chunks_are_one_hidden_folder_per_task_instance_and_name_no_url(root: ObjectStoragePath) -> None:
    for map_index, task_id in ((0, "t-1"), (1, "t-2")):
        mine = memory(root, map_index)
        mine.record(NAME, {"task_id": task_id})
        mine.flush()

    assert memory(root, 1).recall([NAME]) == [{"task_id": "t-2"}]
    objects = stored(root)
    assert len(objects) == 2
    assert len({key.split("/")[0] for key in objects}) == 2
    for key, text in objects.items():
        folder, entry = key.split("/")
        assert folder.startswith(LEDGER_PREFIX)
        assert entry == "chunk-0000.json"
        assert list(json.loads(text).values()) in ([{"task_id": "t-1"}], [{"task_id": "t-2"}])
    assert "bucket.test" not in json.dumps(objects)
    assert "s3cr3t" not in json.dumps(objects)


def test_forget_removes_only_its_own_task_instances_chunks(root: ObjectStoragePath) -> None:
    mine, other = memory(root, 0), memory(root, 1)
    for each in (mine, other):
        each.record(NAME, {"task_id": "t"})
        each.flush()

    mine.forget()
    assert memory(root, 0).recall([NAME]) == [{}]
    assert memory(root, 1).recall([NAME]) == [{"task_id": "t"}]
    assert len(stored(root)) == 1
    mine.forget()  # nothing left to remove: not an error


@pytest.mark.parametrize("text", ["{not json", "[]", '"task"'])
def test_a_chunk_lost_mid_write_resubmits_its_images_and_keeps_its_number(
    root: ObjectStoragePath, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = memory(root, chunk_size=1)
    first.record(NAME, {"task_id": "t-1"})
    first.record("1\nlater", {"task_id": "t-2"})
    (key,) = [key for key in stored(root) if key.endswith("chunk-0000.json")]
    (root / key).write_text(text)  # as a crash mid-write on a local disk, or a hand, could leave it

    retry = memory(root, chunk_size=1)
    assert retry.recall([NAME, "1\nlater"]) == [{}, {"task_id": "t-2"}]
    assert "Chunk 0 of the submission ledger" in caplog.text
    assert "Novita bills them again" in caplog.text
    retry.record(NAME, {"task_id": "t-3"})
    assert sorted(stored(root)) == [key, key.replace("0000", "0001"), key.replace("0000", "0002")]


def test_a_store_that_fails_to_answer_fails_the_lookup_instead_of_resubmitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ObjectStoragePath(f"file://{tmp_path}/out/")
    first = memory(root)
    first.record(NAME, {"task_id": "t-1"})
    first.flush()

    def unavailable(self: object, *args: object, **kwargs: object) -> str:
        raise OSError("503 Slow Down")

    monkeypatch.setattr(type(root / "entry.json"), "read_text", unavailable)
    with pytest.raises(OSError, match="Slow Down"):
        memory(root).recall([NAME])
