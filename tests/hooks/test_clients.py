"""What a connection's requests are built from, and the admission that spreads bursts."""

from __future__ import annotations

import time

import pytest

from airflow_provider_novita.hooks.clients import Admission, ConnectionSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestAdmission:
    def test_a_lone_request_never_waits(self) -> None:
        clock = Clock()
        admission = Admission(rate=10, burst=5, clock=clock)
        for _ in range(20):
            assert admission.delay() == 0
            clock.now += 0.5  # slower than the rate: the allowance never runs out

    def test_a_burst_starts_its_allowance_at_once_then_the_rest_at_the_rate(self) -> None:
        admission = Admission(rate=10, burst=5, clock=Clock())
        delays = [admission.delay() for _ in range(10)]
        assert delays[:5] == [0] * 5
        assert delays[5:] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])

    def test_the_allowance_refills_while_idle_but_never_above_the_burst(self) -> None:
        clock = Clock()
        admission = Admission(rate=10, burst=5, clock=clock)
        for _ in range(10):
            admission.delay()
        clock.now += 60
        assert [admission.delay() for _ in range(6)] == pytest.approx([0, 0, 0, 0, 0, 0.1])


class TestRequests:
    SETTINGS = ConnectionSettings("https://novita.test", "sk-1", timeout=60)

    def test_a_request_carries_the_connection_headers_and_timeouts(self) -> None:
        request = self.SETTINGS.request("GET", "/v3/async/task-result?task_id=a%2Fb")
        assert str(request.url) == "https://novita.test/v3/async/task-result?task_id=a%2Fb"
        assert request.headers["Authorization"] == "Bearer sk-1"
        assert request.extensions["timeout"] == {"connect": 10, "read": 60, "write": 60, "pool": 60}

    def test_timeouts_are_cut_only_when_the_deadline_is_closer_than_the_connections(self) -> None:
        far = self.SETTINGS.request("GET", "/x", deadline=time.time() + 3600)
        assert far.extensions["timeout"]["read"] == 60
        near = self.SETTINGS.request("GET", "/x", deadline=time.time() + 5)
        assert 0 < near.extensions["timeout"]["read"] <= 5
        assert near.extensions["timeout"]["connect"] <= 5
