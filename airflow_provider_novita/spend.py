"""
The spend guard: the most images one task may submit, so that a runaway input list is refused before
Novita bills any of it.

Two can set a cap: the DAG author with ``UpscaleOperator(max_images=...)``, and whoever owns the
Novita connection with its extra ``max_images_per_task``. The smaller one is in force; with neither
there is no cap. It counts the images a try would actually submit: images reused from
``output_path`` and tasks a retry reattaches to bill nothing, so they do not count.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_provider_novita._compat import AirflowFailException


def image_cap(value: object, name: str) -> int | None:
    """
    A cap as a DAG or a connection spells it: a whole number of at least 1, or a string of digits
    (connection forms, secrets backends and templates give strings); None or empty means no cap.
    Anything else raises a ValueError naming ``name``.
    """
    if value is None or value == "":
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        number = int(value.strip())
    if number is None or number < 1:
        raise ValueError(f"{name} must be a whole number of at least 1; got {value!r}"[:300])
    return number


@dataclass(frozen=True)
class ImageCap:
    """The cap in force, and where it came from, for the message that refuses a batch."""

    limit: int
    origin: str

    @classmethod
    def in_force(
        cls, max_images: int | None, max_images_per_task: int | None, conn_id: str
    ) -> ImageCap | None:
        """The smaller of the task's ``max_images`` and the connection's cap, or None if neither is set."""
        caps = []
        if max_images is not None:
            caps.append(cls(max_images, "max_images of this task"))
        if max_images_per_task is not None:
            caps.append(cls(max_images_per_task, f"max_images_per_task of connection {conn_id!r}"))
        return min(caps, key=lambda cap: cap.limit, default=None)

    def check(self, count: int) -> None:
        """
        Refuse ``count`` images over the cap, failing the task without retries: a retry would count
        the same images again.
        """
        if count > self.limit:
            raise AirflowFailException(self.message(count))

    def message(self, count: int) -> str:
        return f"refusing to submit {count} images: {self.origin} is {self.limit}"
