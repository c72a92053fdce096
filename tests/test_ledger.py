"""SubmissionLedger: a retry's memory in output_path before Airflow 3.3, on a local folder and on S3."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_novita.ledger import LEDGER_PREFIX, SubmissionLedger
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


def test_a_later_try_reads_what_an_earlier_one_recorded(root: ObjectStoragePath) -> None:
    SubmissionLedger(root, FakeTaskInstance()).set(NAME, {"task_id": "t-1"})
    SubmissionLedger(root, FakeTaskInstance()).set("1\nother", {"uncertain": "ReadTimeout"})

    later = SubmissionLedger(root, FakeTaskInstance(try_number=2))
    assert later.get(NAME) == {"task_id": "t-1"}
    assert later.get("1\nother") == {"uncertain": "ReadTimeout"}
    assert later.get("2\nnever submitted") == {}


def test_a_first_try_finds_nothing(root: ObjectStoragePath) -> None:
    assert SubmissionLedger(root, FakeTaskInstance()).get(NAME) == {}


def test_entries_are_one_hidden_folder_per_task_instance_and_name_no_url(root: ObjectStoragePath) -> None:
    SubmissionLedger(root, FakeTaskInstance(map_index=0)).set(NAME, {"task_id": "t-1"})
    SubmissionLedger(root, FakeTaskInstance(map_index=1)).set(NAME, {"task_id": "t-2"})

    assert SubmissionLedger(root, FakeTaskInstance(map_index=1)).get(NAME) == {"task_id": "t-2"}
    objects = stored(root)
    assert len(objects) == 2
    assert len({key.split("/")[0] for key in objects}) == 2
    for key, text in objects.items():
        folder, entry = key.split("/")
        assert folder.startswith(LEDGER_PREFIX)
        assert entry.endswith(".json")
        assert json.loads(text) in ({"task_id": "t-1"}, {"task_id": "t-2"})
    assert "bucket.test" not in json.dumps(objects)
    assert "s3cr3t" not in json.dumps(objects)


def test_clear_removes_only_its_own_task_instances_entries(root: ObjectStoragePath) -> None:
    mine, other = SubmissionLedger(root, FakeTaskInstance(map_index=0)), FakeTaskInstance(map_index=1)
    mine.set(NAME, {"task_id": "t-1"})
    SubmissionLedger(root, other).set(NAME, {"task_id": "t-2"})

    mine.clear()
    assert SubmissionLedger(root, FakeTaskInstance(map_index=0)).get(NAME) == {}
    assert SubmissionLedger(root, other).get(NAME) == {"task_id": "t-2"}
    assert len(stored(root)) == 1
    mine.clear()  # nothing left to remove: not an error


@pytest.mark.parametrize("text", ["{not json", "[]", '{"task_id": 7}', '{"other": "x"}'])
def test_an_entry_that_cannot_be_read_is_an_uncertain_submission(root: ObjectStoragePath, text: str) -> None:
    ledger = SubmissionLedger(root, FakeTaskInstance())
    ledger.set(NAME, {"task_id": "t-1"})
    ((key, _),) = stored(root).items()
    (root / key).write_text(text)  # as a crash mid-write, or a hand, could leave it

    assert SubmissionLedger(root, FakeTaskInstance()).get(NAME) == {
        "uncertain": "its ledger entry could not be read"
    }


def test_a_store_that_fails_to_answer_fails_the_lookup_instead_of_resubmitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ObjectStoragePath(f"file://{tmp_path}/out/")
    SubmissionLedger(root, FakeTaskInstance()).set(NAME, {"task_id": "t-1"})

    def unavailable(self: object, *args: object, **kwargs: object) -> str:
        raise OSError("503 Slow Down")

    monkeypatch.setattr(type(root / "entry.json"), "read_text", unavailable)
    with pytest.raises(OSError, match="Slow Down"):
        SubmissionLedger(root, FakeTaskInstance()).get(NAME)
