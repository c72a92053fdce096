"""Sample source images, drawn with Pillow in memory (no files, no network).

They give demos and tests URLs that work offline and fetch over loopback from the emulator itself.
Each one mixes smooth colour gradients with thin lines, circles and text-sized checks, so both the new
size and the quality of the resampling are visible in the result. Drawing is deterministic: the same
Pillow version always produces the same bytes.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True)
class Sample:
    name: str
    content: bytes
    content_type: str
    width: int
    height: int


@functools.cache
def build_samples() -> Mapping[str, Sample]:
    """All samples by file name: three formats, both orientations, and one with transparency.

    Drawn once per process (a few hundred milliseconds, mostly lossless WEBP encoding) and shared,
    read-only, by every emulator in it.
    """
    samples = [
        _sample("landscape.png", _pattern((640, 360), channel_order=(0, 1, 2)), "PNG", "image/png"),
        _sample("portrait.jpg", _pattern((360, 640), channel_order=(2, 0, 1)), "JPEG", "image/jpeg"),
        _sample("square.webp", _pattern((512, 512), channel_order=(1, 2, 0)), "WEBP", "image/webp"),
        _sample("transparent.png", _transparent((320, 240)), "PNG", "image/png"),
    ]
    return MappingProxyType({sample.name: sample for sample in samples})


def _sample(name: str, image: Image.Image, pillow_format: str, content_type: str) -> Sample:
    buffer = io.BytesIO()
    # Lossless WEBP keeps the sample crisp; the quality knob is ignored by the other formats' savers.
    image.save(buffer, pillow_format, quality=90, lossless=pillow_format == "WEBP")
    return Sample(name, buffer.getvalue(), content_type, image.width, image.height)


def _pattern(size: tuple[int, int], channel_order: tuple[int, int, int]) -> Image.Image:
    width, height = size
    horizontal = Image.linear_gradient("L").rotate(90).resize(size)
    vertical = Image.linear_gradient("L").resize(size)
    radial = Image.radial_gradient("L").resize(size)
    channels = (horizontal, vertical, radial)
    image = Image.merge("RGB", tuple(channels[index] for index in channel_order))
    draw = ImageDraw.Draw(image)
    step = max(width, height) // 16
    for x in range(0, width, step):
        draw.line([(x, 0), (x, height)], fill=(255, 255, 255), width=1)
    for y in range(0, height, step):
        draw.line([(0, y), (width, y)], fill=(0, 0, 0), width=1)
    radius = min(width, height) // 4
    center = (width // 2, height // 2)
    draw.ellipse(
        [center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius],
        outline=(255, 230, 0),
        width=6,
    )
    for index in range(8):
        left = step // 2 + index * 6
        draw.rectangle(
            [left, step // 2, left + 2, step // 2 + 24], fill=(0, 0, 0) if index % 2 else (255, 0, 0)
        )
    return image


def _transparent(size: tuple[int, int]) -> Image.Image:
    """A coloured pattern fading to fully transparent on the right, with an opaque disc."""
    image = _pattern(size, channel_order=(0, 2, 1)).convert("RGBA")
    alpha = Image.linear_gradient("L").rotate(-90).resize(size)
    draw = ImageDraw.Draw(alpha)
    width, height = size
    draw.ellipse([width // 8, height // 4, width // 8 + height // 2, height // 4 + height // 2], fill=255)
    image.putalpha(alpha)
    return image
