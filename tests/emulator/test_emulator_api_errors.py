"""Authentication, validation and routing errors: the documented flat body, and nothing created."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import EmulatorApi

V3_CALLS = [
    ("POST", "/v3/async/image-upscaler", {"json": {"image": "http://127.0.0.1:1/x.png"}}, "image-upscaler"),
    ("GET", "/v3/async/task-result", {"params": {"task_id": "whatever"}}, "task-result"),
    ("GET", "/v3/user", {}, "user"),
]
NO_TASKS = {
    "TASK_STATUS_QUEUED": 0,
    "TASK_STATUS_PROCESSING": 0,
    "TASK_STATUS_SUCCEED": 0,
    "TASK_STATUS_FAILED": 0,
}


def assert_error(response: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "reason", "message", "metadata"}
    assert body["code"] == status
    assert body["reason"] == reason
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


def assert_nothing_created(api: EmulatorApi) -> None:
    stats = api.stats()
    assert stats["accepted_submissions"] == 0
    assert stats["submissions_by_image"] == {}
    assert stats["tasks_by_status"] == NO_TASKS
    assert api.client.get("/v3/user").json()["credit_balance"] == api.server.config.credit_balance


@pytest.mark.parametrize(("method", "path", "kwargs", "endpoint"), V3_CALLS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-the-key"},
        {"Authorization": "Basic emulator-key"},
        {"Authorization": "emulator-key"},
    ],
    ids=["missing", "wrong-key", "wrong-scheme", "no-scheme"],
)
def test_v3_endpoints_reject_missing_or_wrong_key(
    api: EmulatorApi, method: str, path: str, kwargs: dict[str, Any], endpoint: str, headers: dict[str, str]
) -> None:
    response = httpx.request(method, api.base_url + path, headers=headers, **kwargs)

    body = assert_error(response, 403, "INVALID_API_KEY")
    assert body["metadata"] == {}
    stats = api.stats()
    assert stats["requests"][endpoint] == 1
    assert stats["accepted_submissions"] == 0


def test_helper_routes_need_no_key(api: EmulatorApi) -> None:
    assert httpx.get(f"{api.base_url}/samples/").status_code == 200
    assert httpx.get(api.sample_url()).status_code == 200
    assert httpx.get(f"{api.base_url}/_emulator/stats").status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "expected_words"),
    [
        ({}, "image", ["image", "URL"]),
        ({"image": ""}, "image", ["image", "non-empty string"]),
        ({"image": "   "}, "image", ["image", "non-empty string"]),
        ({"image": 42}, "image", ["image", "string"]),
        ({"image": ["http://x/y.png"]}, "image", ["image"]),
        ({"image": "http://x/y.png", "resolution": "4K"}, "resolution", ["resolution", "2k, 4k, 8k", '"4K"']),
        ({"image": "http://x/y.png", "resolution": "16k"}, "resolution", ["resolution", "2k, 4k, 8k"]),
        ({"image": "http://x/y.png", "resolution": 4}, "resolution", ["resolution", "2k, 4k, 8k"]),
        ({"image": "http://x/y.png", "output_format": "jpg"}, "output_format", ["jpeg, png, webp"]),
        ({"image": "http://x/y.png", "output_format": "PNG"}, "output_format", ["jpeg, png, webp"]),
        ({"image": "http://x/y.png", "output_format": "gif"}, "output_format", ["output_format", "webp"]),
    ],
)
def test_invalid_fields_are_named_and_create_nothing(
    api: EmulatorApi, body: dict[str, Any], field: str, expected_words: list[str]
) -> None:
    response = api.client.post("/v3/async/image-upscaler", json=body)

    error = assert_error(response, 400, "INVALID_REQUEST_BODY")
    assert error["metadata"] == {"field": field}
    for word in expected_words:
        assert word in error["message"]
    assert_nothing_created(api)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[1, 2]", b'"http://x/y.png"', b"null", b"\xff\xfe"],
    ids=["empty", "text", "array", "string", "null", "not-utf8"],
)
def test_non_object_bodies_are_rejected(api: EmulatorApi, content: bytes) -> None:
    response = api.client.post(
        "/v3/async/image-upscaler", content=content, headers={"Content-Type": "application/json"}
    )

    error = assert_error(response, 400, "INVALID_REQUEST_BODY")
    assert "JSON object" in error["message"]
    assert_nothing_created(api)


def test_null_optional_fields_take_the_documented_defaults(api: EmulatorApi) -> None:
    task_id = api.submit_ok(resolution=None, output_format=None, unknown_field="ignored")

    result = api.wait(task_id)

    assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert result["images"][0]["image_type"] == "jpeg"


@pytest.mark.parametrize("params", [{}, {"task_id": ""}], ids=["absent", "empty"])
def test_task_result_requires_task_id(api: EmulatorApi, params: dict[str, str]) -> None:
    response = api.client.get("/v3/async/task-result", params=params)

    error = assert_error(response, 400, "INVALID_REQUEST_BODY")
    assert error["metadata"] == {"field": "task_id"}
    assert "task_id" in error["message"]


def test_unknown_task_is_not_found(api: EmulatorApi) -> None:
    response = api.result("00000000-0000-4000-8000-000000000000")

    assert_error(response, 404, "TASK_NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v3/async/no-such-api"),
        ("GET", "/"),
        ("GET", "/v3/user/"),
        ("GET", "/v3/async/image-upscaler"),
        ("POST", "/v3/async/task-result"),
        ("DELETE", "/v3/user"),
        ("POST", "/v3/async/upscale"),
    ],
)
def test_unknown_routes_answer_api_not_found(api: EmulatorApi, method: str, path: str) -> None:
    response = api.client.request(method, path)

    assert_error(response, 404, "API_NOT_FOUND")


def test_submission_beyond_the_balance_is_refused(api_factory: Callable[..., EmulatorApi]) -> None:
    api = api_factory(credit_balance=150, submission_cost=100)
    api.submit_ok("http://127.0.0.1:1/a.png")

    response = api.submit("http://127.0.0.1:1/b.png")

    assert_error(response, 400, "BILLING_BALANCE_NOT_ENOUGH")
    stats = api.stats()
    assert stats["accepted_submissions"] == 1
    assert stats["submissions_by_image"] == {"http://127.0.0.1:1/a.png": 1}
    assert api.client.get("/v3/user").json()["credit_balance"] == 50


def test_unknown_sample_is_not_found(api: EmulatorApi) -> None:
    response = httpx.get(api.sample_url("nope.png"))

    assert_error(response, 404, "API_NOT_FOUND")
