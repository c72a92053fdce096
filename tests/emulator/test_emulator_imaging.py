"""The image pipeline on crafted inputs that the emulator's own samples cannot provide."""

from __future__ import annotations

import io
import struct
import zlib
from typing import TYPE_CHECKING

import httpx
import pytest
from PIL import Image

from airflow_provider_novita.emulator import service
from airflow_provider_novita.emulator.imaging import SourceImageError, upscale

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import EmulatorApi


def encode(image: Image.Image, pillow_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, pillow_format, **options)
    return buffer.getvalue()


def png_announcing(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb's calling card."""
    data = bytearray(encode(Image.new("L", (8, 8)), "PNG"))
    header_start = 8 + 8  # signature, then the IHDR chunk's length and type
    data[header_start : header_start + 8] = struct.pack(">II", width, height)
    ihdr = bytes(data[12 : header_start + 13])
    data[header_start + 13 : header_start + 17] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def decoded(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    return image


def test_a_huge_announced_canvas_is_refused_before_decoding() -> None:
    # 64 MP: over the emulator's default cap, under Pillow's own warning threshold.
    with pytest.raises(SourceImageError, match=r"IMAGE_EXCEEDS_MAX_RESOLUTION.*8000x8000"):
        upscale(png_announcing(8000, 8000), "2k", "png", max_pixels=40_000_000)


def test_pillow_bomb_guard_still_applies_above_a_generous_cap() -> None:
    with pytest.raises(SourceImageError, match="IMAGE_EXCEEDS_MAX_RESOLUTION"):
        upscale(png_announcing(50_000, 50_000), "2k", "png", max_pixels=10**12)


@pytest.mark.parametrize(
    "content",
    [b"", b"GIF89a", encode(Image.new("RGB", (64, 64)), "JPEG")[:200], b"%PDF-1.4 not an image"],
    ids=["empty", "header-only", "truncated-jpeg", "pdf"],
)
def test_undecodable_bytes_are_refused(content: bytes) -> None:
    with pytest.raises(SourceImageError, match="INVALID_IMAGE_FORMAT"):
        upscale(content, "2k", "jpeg", max_pixels=40_000_000)


def test_unsupported_formats_are_refused() -> None:
    with pytest.raises(SourceImageError, match="INVALID_IMAGE_FORMAT"):
        upscale(encode(Image.new("RGB", (16, 16)), "TIFF"), "2k", "jpeg", max_pixels=40_000_000)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1000, 1), (2048, 2)), ((3000, 100), (2048, 68)), ((100, 3000), (68, 2048)), ((1, 1), (2048, 2048))],
)
def test_long_edge_becomes_the_target_whatever_the_source_size(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    result = decoded(upscale(encode(Image.new("RGB", size, "red"), "PNG"), "2k", "jpeg", 40_000_000))

    assert result.size == expected


def test_palette_transparency_survives_into_png_and_webp() -> None:
    source = Image.new("P", (32, 32), 0)
    source.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    source.paste(1, (0, 0, 16, 32))
    content = encode(source, "GIF", transparency=1)

    for output_format in ("png", "webp"):
        result = decoded(upscale(content, "2k", output_format, 40_000_000))
        assert result.mode == "RGBA"
        assert result.getpixel((10, 1000))[3] == 0  # type: ignore[index]
        assert result.getpixel((2000, 1000))[3] == 255  # type: ignore[index]


@pytest.mark.parametrize("mode", ["1", "L", "LA", "CMYK", "I;16"])
def test_every_common_mode_becomes_a_jpeg(mode: str) -> None:
    pillow_format = {"CMYK": "JPEG", "1": "BMP", "I;16": "PNG"}.get(mode, "PNG")
    source = encode(Image.new(mode, (40, 30)), pillow_format)

    result = decoded(upscale(source, "2k", "jpeg", 40_000_000))

    assert (result.format, result.mode, result.size) == ("JPEG", "RGB", (2048, 1536))


@pytest.mark.parametrize(("cache_results", "upscales"), [(False, 3), (True, 2)])
def test_cache_results_upscales_each_distinct_source_once(
    api_factory: Callable[..., EmulatorApi],
    monkeypatch: pytest.MonkeyPatch,
    cache_results: bool,
    upscales: int,
) -> None:
    calls: list[str] = []

    def counted(source: bytes, resolution: str, output_format: str, max_pixels: int) -> bytes:
        calls.append(resolution)
        return upscale(source, resolution, output_format, max_pixels)

    monkeypatch.setattr(service, "upscale", counted)
    api = api_factory(cache_results=cache_results, job_duration=0.1, queue_seconds=0.0)
    # The same bytes behind two URLs, then another resolution of them: two distinct results.
    tasks = [
        api.submit_ok(f"{api.sample_url()}?copy=1", resolution="2k"),
        api.submit_ok(f"{api.sample_url()}?copy=2", resolution="2k"),
        api.submit_ok(f"{api.sample_url()}?copy=3", resolution="4k"),
    ]
    results = [api.wait(task_id) for task_id in tasks]
    contents = [httpx.get(result["images"][0]["image_url"]).content for result in results]

    assert len(calls) == upscales
    assert contents[0] == contents[1] != contents[2]
    assert decoded(contents[2]).size == (4096, 2304)
    assert api.stats()["submissions_by_image"] == {f"{api.sample_url()}?copy={n}": 1 for n in (1, 2, 3)}
