"""File names of persisted results: documented, deterministic, unique within a batch and a mapping."""

from __future__ import annotations

import pytest

from airflow_provider_novita.storage import Destination, output_name

RECORD = {"task_id": "task-7", "image_type": "jpeg"}


def test_name_is_stem_resolution_digest_and_extension() -> None:
    name = output_name(RECORD, Destination("https://img.test/photos/cat.png?x=1", "4k", 0), map_index=-1)
    stem, resolution, rest = name.split("-")
    assert (stem, resolution) == ("cat", "4k")
    digest, extension = rest.split(".")
    assert len(digest) == 8
    assert extension == "jpg"


def test_same_inputs_give_the_same_name() -> None:
    destination = Destination("https://img.test/cat.png", "2k", 3)
    assert output_name(RECORD, destination, 1) == output_name(RECORD, destination, 1)


@pytest.mark.parametrize(
    ("other", "map_index"),
    [
        (Destination("https://img.test/cat.png", "2k", 1), -1),  # same image, next position in the batch
        (Destination("https://img.test/cat.png", "2k", 0), 4),  # same image in another mapped task
        (Destination("https://other.test/cat.png", "2k", 0), -1),  # another image with the same file name
    ],
)
def test_names_differ_where_files_must_not_collide(other: Destination, map_index: int) -> None:
    first = output_name(RECORD, Destination("https://img.test/cat.png", "2k", 0), -1)
    assert output_name(RECORD, other, map_index) != first


def test_unsafe_characters_are_replaced_and_the_sensor_omits_the_resolution() -> None:
    name = output_name(
        {"task_id": "t", "image_type": "webp"},
        Destination("https://img.test/My%20Photo%20(1).PNG", None, 0),
        -1,
    )
    assert name.startswith("My_Photo_1-")
    assert name.count("-") == 1
    assert name.endswith(".webp")


def test_without_a_source_the_stem_is_the_novita_task_id() -> None:
    assert output_name(RECORD, Destination(None, "8k", 0), -1).startswith("task-7-8k-")
