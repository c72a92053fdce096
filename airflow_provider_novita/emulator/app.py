"""HTTP layer of the emulator: routes, authentication, request validation and error bodies.

Three groups of routes with different rules, mirroring where they live in reality:

* ``/v3/...`` is the emulated Novita API: bearer-key authentication, injected latency and faults, and
  every error as the documented flat JSON body (unknown routes too: 404 ``API_NOT_FOUND``);
* ``/outputs/{name}`` stands in for the S3 presigned result links: no authentication, S3-style XML
  errors (403 "Request has expired", 404 ``NoSuchKey``);
* ``/samples/...`` and ``/_emulator/...`` are the emulator's own helpers (source images, counters,
  reset) and need no key.

Bodies are parsed by hand rather than with pydantic models so that every invalid request gets the
API's own 400 body, never FastAPI's 422.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .errors import (
    API_NOT_FOUND,
    INVALID_API_KEY,
    INVALID_REQUEST_BODY,
    TASK_NOT_FOUND,
    ApiError,
    invalid_field,
)
from .faults import ConnectionDropped
from .imaging import OUTPUT_CONTENT_TYPES, RESOLUTION_LONG_EDGE
from .outputs import DownloadOutcome
from .service import OUTPUTS_ENDPOINT, RESULT_ENDPOINT, SUBMIT_ENDPOINT, USER_ENDPOINT, EmulatorService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import Receive, Scope, Send

RESOLUTIONS = tuple(RESOLUTION_LONG_EDGE)
OUTPUT_FORMATS = tuple(OUTPUT_CONTENT_TYPES)
DEFAULT_RESOLUTION = "4k"
DEFAULT_OUTPUT_FORMAT = "jpeg"


def create_app(service: EmulatorService) -> FastAPI:
    """Build the ASGI app around ``service``; its lifespan starts and stops the service."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(
        title="Novita AI image-upscaler emulator",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # The real API has no trailing-slash redirects; a wrong path is simply API_NOT_FOUND.
        redirect_slashes=False,
    )
    config = service.config

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ConnectionDropped)
    async def dropped(request: Request, _exc: ConnectionDropped) -> Response:
        service.count_dropped_connection()
        # Closing a socket with unread request bytes makes the kernel answer RST, and the client then
        # sees a reset before or after the truncated answer depending on timing. Reading the body first
        # makes every drop the same: a truncated answer, then the end of the connection.
        await _body_unless_gone(request)
        return TruncatedResponse(b'{"code": 503}', media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def unrouted(request: Request, exc: StarletteHTTPException) -> Response:
        # A known path with the wrong method is as unknown to the API's router as a wrong path.
        if exc.status_code in (404, 405):
            message = f"{request.method} {request.url.path} is not an API"
            return await api_error(request, ApiError(404, API_NOT_FOUND, message))
        return await http_exception_handler(request, exc)

    async def admit(request: Request, endpoint: str) -> None:
        """What every /v3 request goes through before its handler: counting, latency, key, faults."""
        service.count_request(endpoint)
        if config.latency:
            await asyncio.sleep(config.latency)
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() != config.api_key:
            raise ApiError(403, INVALID_API_KEY, "invalid api-key")
        service.faults.check(endpoint)

    @app.post("/v3/async/image-upscaler")
    async def submit(request: Request) -> Response:
        await admit(request, SUBMIT_ENDPOINT)
        raw_body = await _body_unless_gone(request)
        if raw_body is None:
            # The client went away while the request waited (latency): it can read no answer, so
            # the emulator creates nothing. lost_answer_rate models the other possibility.
            service.count_abandoned_submission()
            return Response(status_code=499)
        image, resolution, output_format = parse_submission(raw_body)
        body = {"task_id": service.submit(image, resolution, output_format)}
        if service.faults.lose_answer():
            service.count_lost_answer(image)
            return TruncatedResponse(json.dumps(body).encode(), media_type="application/json")
        return JSONResponse(body)

    @app.get("/v3/async/task-result")
    async def task_result(request: Request) -> Response:
        await admit(request, RESULT_ENDPOINT)
        task_id = request.query_params.get("task_id", "")
        if not task_id:
            raise invalid_field("task_id", "task_id is required: pass ?task_id=<id returned at submission>")
        result = service.result(task_id, str(request.base_url))
        if result is None:
            raise ApiError(404, TASK_NOT_FOUND, f"task {task_id} not found", {"task_id": task_id})
        return JSONResponse(result)

    @app.get("/v3/user")
    async def user(request: Request) -> Response:
        await admit(request, USER_ENDPOINT)
        return JSONResponse(service.user())

    @app.get("/outputs/{name}")
    async def output(name: str) -> Response:
        service.count_request(OUTPUTS_ENDPOINT)
        download = service.download(name)
        if download.outcome is DownloadOutcome.NOT_FOUND:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if download.outcome is DownloadOutcome.EXPIRED:
            return _s3_error(403, "AccessDenied", "Request has expired")
        if download.outcome is DownloadOutcome.TRUNCATED:
            return TruncatedResponse(download.content, media_type=download.content_type)
        return Response(download.content, media_type=download.content_type)

    @app.get("/samples")
    @app.get("/samples/")
    async def list_samples(request: Request) -> Response:
        base_url = str(request.base_url).rstrip("/")
        listing = [
            {
                "name": sample.name,
                "url": f"{base_url}/samples/{sample.name}",
                "content_type": sample.content_type,
                "width": sample.width,
                "height": sample.height,
                "bytes": len(sample.content),
            }
            for sample in service.samples.values()
        ]
        return JSONResponse({"samples": listing})

    @app.get("/samples/{name}")
    async def sample(name: str) -> Response:
        found = service.samples.get(name)
        if found is None:
            raise ApiError(404, API_NOT_FOUND, f"no sample named {name!r}; GET /samples/ lists them")
        return Response(found.content, media_type=found.content_type)

    @app.get("/_emulator/stats")
    async def stats() -> Response:
        return JSONResponse(service.stats())

    @app.post("/_emulator/reset")
    async def reset() -> Response:
        await service.reset()
        return JSONResponse(service.stats())

    return app


async def _body_unless_gone(request: Request) -> bytes | None:
    """The request body, or None if the client has disconnected."""
    try:
        body = await request.body()
    except ClientDisconnect:
        return None
    return None if await request.is_disconnected() else body


def parse_submission(raw_body: bytes) -> tuple[str, str, str]:
    """Validate a submission body; returns (image, resolution, output_format) with defaults applied."""
    try:
        body: Any = json.loads(raw_body)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(
            400,
            INVALID_REQUEST_BODY,
            'the request body must be a JSON object such as {"image": "https://...", "resolution": "4k"}',
        )
    image = body.get("image")
    if not isinstance(image, str) or not image.strip():
        raise invalid_field("image", "image is required and must be a non-empty string: the source image URL")
    resolution = _choice(body, "resolution", RESOLUTIONS, DEFAULT_RESOLUTION)
    output_format = _choice(body, "output_format", OUTPUT_FORMATS, DEFAULT_OUTPUT_FORMAT)
    return image, resolution, output_format


def _choice(body: dict[str, Any], field: str, allowed: tuple[str, ...], default: str) -> str:
    # JSON null counts as absent: clients that serialise unset optional fields as null get the default.
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise invalid_field(field, f"{field} must be one of {', '.join(allowed)} (got {json.dumps(value)})")
    return value


def _s3_error(status: int, code: str, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml")


class TruncatedResponse(Response):
    """Announces the full Content-Length, sends the first half of the body, then drops the connection.

    Returning without the final body message is the only way an ASGI app can abort a response midway:
    the server notices the incomplete response, logs it, and closes the connection, so the client sees
    a body shorter than announced, as with a connection reset during a real download.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
