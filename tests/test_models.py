"""API models: validation of what DAG authors pass, and untrusting parsing of what Novita answers."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_novita.exceptions import NovitaError
from airflow_provider_novita.models import (
    ResultImage,
    TaskResult,
    TaskStatus,
    UpscaleRequest,
    check_image,
    check_images,
    is_plain_literal,
    redact_url,
)

SUCCEED_BODY: dict[str, Any] = {
    "extra": {"seed": "1", "debug_info": {"complete_time_ms": "1764000000123"}},
    "task": {
        "task_id": "t1",
        "status": "TASK_STATUS_SUCCEED",
        "reason": "",
        "eta": 0,
        "progress_percent": 100,
    },
    "images": [{"image_url": "https://o.test/x.webp", "image_url_ttl": "3600", "image_type": "webp"}],
    "videos": [],
    "audios": [],
}


class TestUpscaleRequest:
    def test_defaults_are_novitas(self) -> None:
        assert UpscaleRequest("https://x.test/a.png").to_json() == {
            "image": "https://x.test/a.png",
            "resolution": "4k",
            "output_format": "jpeg",
        }

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"resolution": "16k"}, "resolution must be one of 2k, 4k, 8k; got '16k'"),
            ({"resolution": "4K"}, "resolution must be one of 2k, 4k, 8k; got '4K'"),
            ({"resolution": 4}, "resolution must be one of 2k, 4k, 8k; got int 4"),
            ({"output_format": "gif"}, "output_format must be one of jpeg, png, webp; got 'gif'"),
            ({"output_format": None}, "output_format must be one of jpeg, png, webp; got NoneType None"),
            # A rejected value that is no URL is shown as given, even where a URL would be cut.
            ({"resolution": "4k?hd#1"}, "resolution must be one of 2k, 4k, 8k; got '4k\\?hd#1'"),
        ],
    )
    def test_invalid_choices_list_the_allowed_values(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            UpscaleRequest("https://x.test/a.png", **kwargs)

    def test_a_storage_uri_is_never_sent_unsigned(self) -> None:
        request = UpscaleRequest("s3://bucket/a.png")
        with pytest.raises(
            ValueError,
            match=r"^image 's3://bucket/a.png' must be signed into an http\(s\) URL before it is sent$",
        ):
            request.to_json()
        assert request.with_image("https://bucket.test/a.png?sig=1").to_json()["image"] == (
            "https://bucket.test/a.png?sig=1"
        )

    def test_surrounding_whitespace_of_the_url_is_stripped(self) -> None:
        assert UpscaleRequest("  https://x.test/a.png\n").image == "https://x.test/a.png"

    def test_identity_differs_by_position_and_by_every_field(self) -> None:
        request = UpscaleRequest("https://x.test/a.png", "2k", "png")
        identities = {
            request.identity(0),
            request.identity(1),
            UpscaleRequest("https://x.test/b.png", "2k", "png").identity(0),
            UpscaleRequest("https://x.test/a.png", "4k", "png").identity(0),
            UpscaleRequest("https://x.test/a.png", "2k", "webp").identity(0),
        }
        assert len(identities) == 5


class TestImageUrl:
    @pytest.mark.parametrize(
        ("image", "problem"),
        [
            ("/tmp/a.png", "it is a local file, which Novita cannot fetch: put it in object storage"),
            ("a.png", "it is a local file"),
            ("file:///a.png", "it is a local file"),
            ("local:///a.png", "it is a local file"),
            ("", "it is empty"),
            ("https://", "it has no host"),
            ("http://:80/a.png", "it has no host"),
            ("http://[::1/a.png", "it is not a URL"),
            ("s3:///a.png", "it names no bucket"),
            ("s3://bucket", "it names no object"),
            ("s3://bucket/", "it names no object"),
            ("s3://aws_default@bucket/", "it names no object"),
            ("gs://bucket/folder/", "it names no object"),
            ("s3://bucket/a b.png", "it contains whitespace or control characters"),
            ("https://x.test/a b.png", "it contains whitespace or control characters"),
            ("https://x.test/a.png\x00", "it contains whitespace or control characters"),
            ("https://x.test/\ta.png", "it contains whitespace or control characters"),
            ("https://x.test/a.png\u200b", "it contains whitespace or control characters"),
        ],
    )
    def test_only_http_urls_or_storage_uris_of_one_object(self, image: str, problem: str) -> None:
        with pytest.raises(
            ValueError, match=f"^image must be an http\\(s\\) URL, an object storage URI.*but {problem}"
        ):
            check_image(image)

    @pytest.mark.parametrize(
        "image",
        [
            "https://x.test/a.png",
            "s3://bucket/a.png",
            "s3://aws_default@bucket/photos/2026/a.png",
            "gs://bucket/a.png",
            "abfs://container/dir/a.png",
            "  s3://bucket/a.png\n",
            "s3://bucket/X",
            # An http(s) URL needs no path: the server decides what it serves.
            "http://x.test",
            "https://x.test/",
        ],
    )
    def test_http_urls_and_object_storage_uris_are_sources(self, image: str) -> None:
        assert check_image(image) == image.strip()

    @pytest.mark.parametrize("value", [5, None, {"url": "https://x.test/a.png"}, ["https://x.test/a.png"]])
    def test_a_non_string_is_named_with_its_type(self, value: object) -> None:
        with pytest.raises(
            ValueError, match=f"^image must be an http\\(s\\) URL, .*; got {type(value).__name__}"
        ):
            check_image(value)

    def test_errors_never_show_a_presigned_query(self) -> None:
        with pytest.raises(ValueError, match="image must") as info:
            check_image("https://b.test/a b.png?X-Amz-Signature=secret")
        assert "secret" not in str(info.value)
        assert "https://b.test/a b.png" in str(info.value)

    def test_redact_url_keeps_only_scheme_host_port_and_path(self) -> None:
        assert redact_url("https://user:pw@b.test:8443/p/a.png?sig=1#f") == "https://b.test:8443/p/a.png"

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("file:///data/a.png?sig=1", "file:///data/a.png"),
            ("http://[::1/a.png?sig=1", "<unparseable URL>"),
        ],
    )
    def test_redact_url_of_a_url_without_host_or_that_cannot_be_parsed(self, url: str, shown: str) -> None:
        assert redact_url(url) == shown


class TestImageLists:
    def test_a_list_gives_its_sources_in_order_checked_and_stripped(self) -> None:
        assert check_images([" https://x.test/a.png", "s3://bucket/b.png\n"]) == [
            "https://x.test/a.png",
            "s3://bucket/b.png",
        ]

    @pytest.mark.parametrize(
        ("image", "got"), [([], "an empty list"), ((), "an empty list"), (5, "a int"), ({"a": 1}, "a dict")]
    )
    def test_an_empty_list_or_another_type_is_named(self, image: object, got: str) -> None:
        with pytest.raises(
            ValueError, match=f"^image must be one source or a non-empty list of them; got {got}$"
        ):
            check_images(image)

    def test_a_bad_source_in_a_list_is_named_with_its_position(self) -> None:
        with pytest.raises(ValueError, match=r"but it is empty: '' \(at position 1 of the image list\)$"):
            check_images(["https://x.test/a.png", " "])


class TestIsPlainLiteral:
    @pytest.mark.parametrize(
        "value",
        ["https://x.test/a.png", ["https://x.test/a.png", "https://x.test/b.png"], ("a",), 4, None, "4k"],
    )
    def test_written_out_values_are_literal(self, value: object) -> None:
        assert is_plain_literal(value)

    @pytest.mark.parametrize(
        "value",
        [
            "{{ params.url }}",
            "{% if true %}https://x.test/a.png{% endif %}",
            "https://x.test/{# c #}a.png",
            ["https://x.test/a.png", "{{ x }}"],
            [object()],
            object(),
            {"url": "https://x.test/a.png"},
        ],
    )
    def test_templates_and_objects_airflow_resolves_later_are_not(self, value: object) -> None:
        assert not is_plain_literal(value)


class TestTaskResult:
    def test_parses_the_documented_example(self) -> None:
        result = TaskResult.from_api(SUCCEED_BODY, "t1")
        assert result.status is TaskStatus.SUCCEED
        assert result.images == (ResultImage("https://o.test/x.webp", "webp", 3600),)
        assert result.completed_at == 1764000000.123
        assert result.url_expires_at == 1764000000.123 + 3600

    def test_missing_keys_mean_unknown(self) -> None:
        result = TaskResult.from_api({"task": {"status": "TASK_STATUS_QUEUED"}}, "t9")
        assert (result.task_id, result.images, result.eta, result.progress_percent, result.completed_at) == (
            "t9",
            (),
            None,
            None,
            None,
        )

    def test_the_result_is_filed_under_the_polled_id(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING)
        body = {**SUCCEED_BODY, "task": {**SUCCEED_BODY["task"], "task_id": "someone-else"}}
        assert TaskResult.from_api(body, "polled").task_id == "polled"
        assert caplog.messages == [
            "Novita answered the poll of task polled with task id someone-else; filing it under polled"
        ]

    @pytest.mark.parametrize(
        "eta",
        [
            math.nan,
            math.inf,
            -math.inf,
            1e300,
            10**400,
            -5,
            "soon",
            "1e999",
            "nan",
            True,
            [1],
            {"s": 1},
            None,
            "",
        ],
    )
    def test_an_eta_that_is_not_a_plausible_number_is_unknown(self, eta: object) -> None:
        result = TaskResult.from_api({"task": {"status": "TASK_STATUS_PROCESSING", "eta": eta}}, "t")
        assert result.eta is None

    @pytest.mark.parametrize("eta", [12, "12", 12.0, " 12 "])
    def test_an_eta_in_seconds_is_kept(self, eta: object) -> None:
        assert TaskResult.from_api({"task": {"eta": eta}}, "t").eta == 12

    @pytest.mark.parametrize("progress", [math.nan, math.inf, 101, -1, "x", 10**400])
    def test_progress_outside_0_to_100_is_unknown(self, progress: object) -> None:
        assert TaskResult.from_api({"task": {"progress_percent": progress}}, "t").progress_percent is None

    @pytest.mark.parametrize("progress", [0, 0.0, 100, 100.0, "100"])
    def test_progress_at_either_end_of_0_to_100_is_kept(self, progress: object) -> None:
        assert TaskResult.from_api({"task": {"progress_percent": progress}}, "t").progress_percent == float(
            progress  # type: ignore[arg-type]
        )

    @pytest.mark.parametrize("reason", [{"code": 1}, ["x"], True, None])
    def test_a_reason_that_is_no_text_or_number_is_empty(self, reason: object) -> None:
        body = {"task": {"status": "TASK_STATUS_FAILED", "reason": reason}}
        assert TaskResult.from_api(body, "t").reason == ""

    @pytest.mark.parametrize(
        ("ttl", "expected"),
        [
            (60, 60),
            ("3600", 3600),
            ("0", None),
            ("soon", None),
            ("1e999", None),
            (math.nan, None),
            (-1, None),
        ],
    )
    def test_ttl_may_be_int_or_string_and_zero_or_junk_means_unknown(
        self, ttl: object, expected: object
    ) -> None:
        image = {"image_url": "https://o.test/u.png", "image_url_ttl": ttl, "image_type": "png"}
        result = TaskResult.from_api({"task": {"status": "TASK_STATUS_SUCCEED"}, "images": [image]}, "t")
        assert result.images[0].image_url_ttl == expected

    @pytest.mark.parametrize(
        "completed", ["", "0", "-1", "1000000", "nan", "1e999", 10**400, "soon", 4102444800000 * 100]
    )
    def test_an_implausible_completion_time_is_unknown_and_so_is_the_expiry(self, completed: object) -> None:
        body = {**SUCCEED_BODY, "extra": {"debug_info": {"complete_time_ms": completed}}}
        result = TaskResult.from_api(body, "t1")
        assert (result.completed_at, result.url_expires_at) == (None, None)

    def test_images_without_an_http_url_are_dropped(self) -> None:
        images = [
            {"image_url": "file:///etc/passwd"},
            {"image_url": 5},
            "x",
            {"image_url": "https://o.test/a"},
            {"image_url": "http://o.test/b"},
        ]
        result = TaskResult.from_api({"task": {"status": "TASK_STATUS_SUCCEED"}, "images": images}, "t")
        assert [i.image_url for i in result.images] == ["https://o.test/a", "http://o.test/b"]

    @pytest.mark.parametrize(
        ("status", "shown"), [("TASK_STATUS_UNKNOWN", "TASK_STATUS_UNKNOWN"), (None, "(none)")]
    )
    def test_unknown_status_is_unfinished_and_logged(
        self, caplog: pytest.LogCaptureFixture, status: str | None, shown: str
    ) -> None:
        caplog.set_level(logging.WARNING, logger="airflow_provider_novita.models")
        result = TaskResult.from_api({"task": {"status": status, "task_id": ""}}, "t")
        assert result.status is TaskStatus.UNKNOWN
        assert not result.status.is_terminal
        # An empty task id in the answer is no other task's: nothing more is logged.
        assert caplog.messages == [f"Novita task t has a status this provider does not know: {shown}"]

    @pytest.mark.parametrize(("body", "kind"), [([], "list"), ("ok", "str"), (None, "NoneType"), (3, "int")])
    def test_a_body_that_is_not_an_object_is_the_providers_error(self, body: object, kind: str) -> None:
        with pytest.raises(
            NovitaError, match=f"^Novita answered the task-result request for task t with a {kind} instead of"
        ):
            TaskResult.from_api(body, "t")

    def test_dict_round_trip(self) -> None:
        result = TaskResult.from_api(SUCCEED_BODY, "t1")
        assert TaskResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result

    @pytest.mark.parametrize(
        "result",
        [
            TaskResult("t2", TaskStatus.PROCESSING, eta=12.5, progress_percent=40.0),
            TaskResult("t3", TaskStatus.FAILED, reason="INVALID_IMAGE_FORMAT", completed_at=1764000000.5),
        ],
    )
    def test_dict_round_trip_keeps_every_field(self, result: TaskResult) -> None:
        assert TaskResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result

    def test_values_read_back_from_a_dict_are_checked_again(self) -> None:
        """An event is stored data: whatever it holds, implausible values come back unknown."""
        stored = {
            "task_id": "t4",
            "status": "TASK_STATUS_PROCESSING",
            "eta": -1,
            "progress_percent": 100.5,
            "completed_at": 0,
            "images": [{"image_url": "file:///etc/passwd"}],
        }
        assert TaskResult.from_dict(stored) == TaskResult("t4", TaskStatus.PROCESSING)


# Any JSON value, including the non-finite floats and huge integers Python's json module accepts.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300) | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
STATUS = st.sampled_from([s.value for s in TaskStatus]) | JSON
TASK = st.fixed_dictionaries(
    {},
    optional={
        "task_id": JSON,
        "status": STATUS,
        "reason": JSON,
        "eta": JSON,
        "progress_percent": JSON,
        "task_type": JSON,
    },
)
IMAGE = st.fixed_dictionaries(
    {},
    optional={"image_url": st.just("https://o.test/a.png") | JSON, "image_url_ttl": JSON, "image_type": JSON},
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "task": TASK | JSON,
        "images": st.lists(IMAGE | JSON, max_size=3) | JSON,
        "extra": st.fixed_dictionaries(
            {}, optional={"debug_info": st.dictionaries(st.just("complete_time_ms"), JSON)}
        )
        | JSON,
        "videos": JSON,
    },
).flatmap(
    lambda body: st.dictionaries(st.text(max_size=6), JSON, max_size=2).map(lambda extra: {**extra, **body})
)


class TestParsingProperties:
    """Whatever Novita (or a proxy) answers, parsing returns a usable result or the provider's error."""

    @settings(max_examples=400, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(body=BODY | JSON, task_id=st.text(min_size=1, max_size=20))
    def test_parsing_returns_a_sane_result_or_raises_the_providers_error(
        self, body: object, task_id: str
    ) -> None:
        try:
            result = TaskResult.from_api(body, task_id)
        except NovitaError:
            return
        assert result.task_id == task_id
        assert isinstance(result.status, TaskStatus)
        assert result.eta is None or 0 < result.eta <= 86400
        assert result.progress_percent is None or 0 <= result.progress_percent <= 100
        assert all(image.image_url.startswith(("http://", "https://")) for image in result.images)
        assert all(image.image_url_ttl is None or image.image_url_ttl > 0 for image in result.images)
        assert result.url_expires_at is None or math.isfinite(result.url_expires_at)
        # What is parsed travels in trigger events: it must be strict JSON and come back the same.
        event = json.loads(json.dumps(result.to_dict(), allow_nan=False))
        assert TaskResult.from_dict(event) == result
