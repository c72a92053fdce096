"""The spend guard's cap: how it is spelt, which one is in force, and what it refuses."""

from __future__ import annotations

import pytest

from airflow_provider_novita.spend import ImageCap, image_cap
from tests.compat import AirflowFailException


@pytest.mark.parametrize(
    ("value", "cap"), [(None, None), ("", None), (1, 1), (1000, 1000), ("1000", 1000), (" 7\n", 7)]
)
def test_a_cap_is_a_whole_number_or_a_string_of_digits(value: object, cap: int | None) -> None:
    assert image_cap(value, "max_images") == cap


@pytest.mark.parametrize("value", [0, -1, "0", "-3", "1e3", "12.5", 2.5, True, "abc", "١٢", [5]])
def test_anything_else_is_refused_naming_where_it_came_from(value: object) -> None:
    with pytest.raises(ValueError, match=r"^extra 'x' must be a whole number of at least 1; got "):
        image_cap(value, "extra 'x'")


def test_the_smaller_cap_is_in_force_and_named() -> None:
    assert ImageCap.in_force(None, None, "novita_default") is None
    assert ImageCap.in_force(5, None, "c") == ImageCap(5, "max_images of this task")
    assert ImageCap.in_force(None, 9, "c") == ImageCap(9, "max_images_per_task of connection 'c'")
    assert ImageCap.in_force(50, 9, "c") == ImageCap(9, "max_images_per_task of connection 'c'")
    assert ImageCap.in_force(5, 9, "c") == ImageCap(5, "max_images of this task")


def test_a_count_over_the_cap_fails_without_retries_and_says_why() -> None:
    cap = ImageCap(1000, "max_images_per_task of connection 'novita_default'")
    cap.check(1000)
    with pytest.raises(AirflowFailException) as info:
        cap.check(1200)
    assert str(info.value) == (
        "refusing to submit 1200 images: max_images_per_task of connection 'novita_default' is 1000"
    )
