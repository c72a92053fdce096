"""API models: validation of what we send, tolerant parsing of what comes back."""

from __future__ import annotations

import logging

import pytest

from airflow_provider_novita.models import TaskResult, TaskStatus, UpscaleRequest


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
            ({"output_format": "gif"}, "output_format must be one of jpeg, png, webp; got 'gif'"),
        ],
    )
    def test_invalid_choices_list_the_allowed_values(self, kwargs: dict[str, str], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            UpscaleRequest("https://x.test/a.png", **kwargs)

    @pytest.mark.parametrize("image", ["/tmp/a.png", "s3://bucket/a.png", "https://", "", "file:///a.png"])
    def test_image_must_be_an_http_url(self, image: str) -> None:
        with pytest.raises(ValueError, match="image must be an http\\(s\\) URL"):
            UpscaleRequest(image)


class TestTaskResult:
    def test_parses_the_documented_example(self) -> None:
        result = TaskResult.from_api(
            {
                "extra": {"seed": "1", "debug_info": {"complete_time_ms": "1764000000123"}},
                "task": {
                    "task_id": "t1",
                    "status": "TASK_STATUS_SUCCEED",
                    "reason": "",
                    "eta": 0,
                    "progress_percent": 100,
                },
                "images": [
                    {"image_url": "https://o.test/x.webp", "image_url_ttl": "3600", "image_type": "webp"}
                ],
                "videos": [],
                "audios": [],
            },
            "t1",
        )
        assert result.status is TaskStatus.SUCCEED
        assert result.images[0].image_url_ttl == 3600
        assert result.completed_at_ms == 1764000000123

    def test_missing_keys_mean_empty(self) -> None:
        result = TaskResult.from_api({"task": {"status": "TASK_STATUS_QUEUED"}}, "t9")
        assert (result.task_id, result.images, result.eta, result.completed_at_ms) == ("t9", (), 0, None)

    def test_ttl_may_be_int_or_string_or_junk(self) -> None:
        images = [
            {"image_url": "u1", "image_url_ttl": 60, "image_type": "png"},
            {"image_url": "u2", "image_url_ttl": "0", "image_type": "png"},
            {"image_url": "u3", "image_url_ttl": "soon", "image_type": "png"},
        ]
        result = TaskResult.from_api({"task": {"status": "TASK_STATUS_SUCCEED"}, "images": images}, "t")
        assert [i.image_url_ttl for i in result.images] == [60, 0, None]

    def test_unknown_status_is_unfinished_and_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING)
        result = TaskResult.from_api({"task": {"status": "TASK_STATUS_UNKNOWN"}}, "t")
        assert result.status is TaskStatus.UNKNOWN
        assert not result.status.is_terminal
        assert result.raw_status == "TASK_STATUS_UNKNOWN"
        assert "status this provider does not know: 'TASK_STATUS_UNKNOWN'" in caplog.text

    def test_dict_round_trip(self) -> None:
        result = TaskResult.from_api(
            {
                "task": {
                    "task_id": "t",
                    "status": "TASK_STATUS_PROCESSING",
                    "eta": "12",
                    "progress_percent": 40,
                }
            },
            "t",
        )
        assert TaskResult.from_dict(result.to_dict()) == result
