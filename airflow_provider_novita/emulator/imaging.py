"""The real work behind a task: download the source image, then decode, resize and encode it.

Pixel sizes are the emulator's own choice, because Novita does not document what 2k/4k/8k mean in
pixels: the LONG edge of the result becomes 2048 (2k), 4096 (4k) or 8192 (8k), the aspect ratio is kept,
and the resampling filter is Lanczos. Sources larger than the target are scaled down to it, so the long
edge always equals the target.

Defences, because the source URL comes from the caller:

* the download is streamed and stops at ``max_source_bytes`` (declared Content-Length is checked first),
  and the whole download must finish within ``fetch_timeout`` seconds;
* width x height is read from the image header and checked against ``max_source_pixels`` before a
  single pixel is decoded, so a small file announcing a gigantic canvas (a decompression bomb) is never
  expanded. Pillow's own process-wide ``Image.MAX_IMAGE_PIXELS`` guard is left as it is: changing it would
  change the behaviour of every other Pillow user in the process;
* only common web formats are opened (JPEG, PNG, WEBP, GIF, BMP; the first frame of animations).

Every failure becomes a :class:`SourceImageError` whose ``reason`` ends up in the failed task.
"""

from __future__ import annotations

import asyncio
import io

import httpx
from PIL import Image

RESOLUTION_LONG_EDGE: dict[str, int] = {"2k": 2048, "4k": 4096, "8k": 8192}
OUTPUT_CONTENT_TYPES: dict[str, str] = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
ACCEPTED_SOURCE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

_JPEG_BACKGROUND = (255, 255, 255)


class SourceImageError(Exception):
    """The source image cannot be turned into a result; ``reason`` is the task's failure reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def fetch_source(client: httpx.AsyncClient, url: str, max_bytes: int, timeout: float) -> bytes:
    """Download ``url`` (http or https) with a byte cap and a total time limit."""
    try:
        if httpx.URL(url).scheme not in ("http", "https"):
            raise SourceImageError("TASK_FAILED: source image could not be fetched: only http and https URLs")
        return await asyncio.wait_for(_download(client, url, max_bytes), timeout)
    except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
        raise SourceImageError(
            f"TASK_FAILED: source image could not be fetched: timed out after {timeout:g} s"
        ) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise SourceImageError(
            f"TASK_FAILED: source image could not be fetched: {type(exc).__name__}: {exc}"
        ) from exc


async def _download(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    too_large = SourceImageError(
        f"IMAGE_FILE_EXCEEDS_MAX_SIZE: source image is larger than {max_bytes} bytes"
    )
    async with client.stream("GET", url) as response:
        if not response.is_success:
            raise SourceImageError(
                f"TASK_FAILED: source image could not be fetched: HTTP {response.status_code}"
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large
        chunks: list[bytes] = []
        received = 0
        # aiter_bytes yields decoded content, so the cap also stops compressed (gzip) bombs.
        async for chunk in response.aiter_bytes():
            received += len(chunk)
            if received > max_bytes:
                raise too_large
            chunks.append(chunk)
    return b"".join(chunks)


def upscale(source: bytes, resolution: str, output_format: str, max_pixels: int) -> bytes:
    """Decode ``source``, resize its long edge to the resolution's size and encode it (CPU-bound)."""
    image = _decode(source, max_pixels)
    with image:
        width, height = image.size
        long_edge = RESOLUTION_LONG_EDGE[resolution]
        if width >= height:
            size = (long_edge, max(1, round(height * long_edge / width)))
        else:
            size = (max(1, round(width * long_edge / height)), long_edge)
        resized = image.resize(size, Image.Resampling.LANCZOS)
    with resized:
        return _encode(resized, output_format)


def _decode(source: bytes, max_pixels: int) -> Image.Image:
    """Open lazily, check the header's size, then decode into RGB or RGBA (resizable in any format)."""
    try:
        image = Image.open(io.BytesIO(source), formats=ACCEPTED_SOURCE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise SourceImageError(f"IMAGE_EXCEEDS_MAX_RESOLUTION: {exc}") from exc
    except Exception as exc:
        raise SourceImageError("INVALID_IMAGE_FORMAT: source image is not a decodable image") from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise SourceImageError(
                f"IMAGE_EXCEEDS_MAX_RESOLUTION: source image is {width}x{height}, "
                f"more than {max_pixels} pixels"
            )
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        try:
            # Palette and 1-bit images cannot be resampled with Lanczos, and every output format
            # accepts RGB(A), so everything is normalised to one of the two.
            return image.convert("RGBA" if has_alpha else "RGB")
        except Exception as exc:
            raise SourceImageError(
                "INVALID_IMAGE_FORMAT: source image is not a decodable image (corrupt or truncated)"
            ) from exc


def _encode(image: Image.Image, output_format: str) -> bytes:
    buffer = io.BytesIO()
    if output_format == "jpeg":
        if image.mode == "RGBA":
            # JPEG has no alpha: flatten onto white, as a plain convert("RGB") would expose whatever
            # colour the transparent pixels happen to carry (often black).
            flattened = Image.new("RGB", image.size, _JPEG_BACKGROUND)
            flattened.paste(image, mask=image.getchannel("A"))
            image = flattened
        image.save(buffer, "JPEG", quality=90)
    elif output_format == "png":
        # Level 1 is several times faster than the default and still compresses smooth images well.
        image.save(buffer, "PNG", compress_level=1)
    else:
        image.save(buffer, "WEBP", quality=90)
    return buffer.getvalue()
