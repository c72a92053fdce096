"""
The "Novita AI" connection as users meet it in the Airflow UI, asked of a real ``airflow api-server``.

The UI draws the "Add Connection" form from ``GET /ui/connections/hook_meta`` and runs "Test
connection" through ``POST /api/v2/connections/test`` (only with ``[core] test_connection =
Enabled``), both served by the api-server from the installed providers' metadata. These tests start
one api-server on a fresh SQLite metadata database and ask it, so they check what the browser gets
on the Airflow version installed, not what the provider means to send.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest

from airflow_provider_novita.emulator import EmulatorConfig, EmulatorServer
from tests.deployment import AirflowDeployment, free_port, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

API_KEY = "sk-form-secret-5151"
START_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    home = tmp_path_factory.mktemp("form-home")
    port = free_port()
    deployment = AirflowDeployment.on_sqlite(
        home,
        api_port=port,
        dags_folder=home / "dags",
        connections={},
        settings={"AIRFLOW__CORE__TEST_CONNECTION": "Enabled"},
    )
    try:
        deployment.run_cli("db-migrate", "db", "migrate", timeout=START_TIMEOUT)
        deployment.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        with deployment.client(timeout=60) as client:

            def answers() -> bool:
                deployment.assert_running()
                try:
                    return client.get("/api/v2/monitor/health").status_code == 200
                except httpx.HTTPError:
                    return False

            assert wait_for(answers, START_TIMEOUT, interval=0.5), deployment.tail("api-server")
            yield client
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY)) as server:
        yield server


def _novita_form(api: httpx.Client) -> dict[str, Any]:
    response = api.get("/ui/connections/hook_meta")
    assert response.status_code == 200, response.text
    (form,) = [entry for entry in response.json() if entry["connection_type"] == "novita"]
    assert isinstance(form, dict)
    return form


def test_the_form_shows_base_url_and_api_key_and_hides_the_rest(api: httpx.Client) -> None:
    form = _novita_form(api)

    assert form["hook_name"] == "Novita AI"
    standard = form["standard_fields"]
    assert standard["host"]["title"] == "API base URL"
    assert standard["host"]["hidden"] is False
    assert standard["password"]["title"] == "API Key"
    assert standard["password"]["hidden"] is False
    for hidden in ("login", "port", "url_schema"):
        assert standard[hidden]["hidden"] is True, (hidden, standard[hidden])


def test_placeholders_fit_their_fields(api: httpx.Client) -> None:
    standard = _novita_form(api)["standard_fields"]

    # The UI cuts a placeholder longer than its input box mid-sentence: ~40 characters fit.
    assert standard["host"]["placeholder"] == "https://api.novita.ai"
    assert len(standard["password"]["placeholder"]) <= 40


def test_the_extra_fields_carry_titles_and_descriptions(api: httpx.Client) -> None:
    extra = _novita_form(api)["extra_fields"]

    assert extra["timeout"]["schema"]["title"] == "Request timeout (seconds)"
    assert extra["max_retries"]["schema"]["title"] == "Max retries"
    assert "Default 60" in extra["timeout"]["description"]
    assert extra["proxy"]["schema"]["title"] == "Proxy URL"
    assert extra["max_images_per_task"]["schema"]["title"] == "Max images per task"
    assert "NO_PROXY" in extra["proxy"]["description"]


def _test_connection(api: httpx.Client, host: str, password: str) -> dict[str, Any]:
    body = {"connection_id": "novita_form", "conn_type": "novita", "host": host, "password": password}
    response = api.post("/api/v2/connections/test", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_test_connection_with_a_good_key_reports_the_account(
    api: httpx.Client, emulator: EmulatorServer
) -> None:
    answer = _test_connection(api, emulator.base_url, API_KEY)

    assert answer["status"] is True, answer
    assert answer["message"].startswith(f"Connected to Novita at {emulator.base_url}"), answer
    assert "credit balance" in answer["message"]


def test_test_connection_with_a_bad_key_names_novitas_reason_not_the_key(
    api: httpx.Client, emulator: EmulatorServer
) -> None:
    wrong_key = "sk-wrong-key-0000"
    answer = _test_connection(api, emulator.base_url, wrong_key)

    assert answer["status"] is False, answer
    assert "INVALID_API_KEY" in answer["message"], answer
    assert "403" in answer["message"], answer
    assert wrong_key not in answer["message"]


def test_test_connection_to_an_unreachable_host_names_it_without_the_key(api: httpx.Client) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    answer = _test_connection(api, closed, API_KEY)

    assert answer["status"] is False, answer
    assert "127.0.0.1" in answer["message"], answer
    assert API_KEY not in answer["message"]
