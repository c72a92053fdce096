"""Packaging: the provider registers with Airflow and its metadata passes Airflow's own schema."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from importlib.metadata import entry_points

import jsonschema

import airflow_provider_novita
from airflow_provider_novita import get_provider_info


def test_provider_info_validates_against_airflows_schema() -> None:
    schema = json.loads(resources.files("airflow").joinpath("provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_entry_point_points_at_get_provider_info() -> None:
    (entry,) = [
        e
        for e in entry_points(group="apache_airflow_provider")
        if e.dist and e.dist.name == "airflow-provider-novita"
    ]
    assert entry.load() is get_provider_info


def test_every_module_named_in_the_metadata_imports_and_the_hook_matches() -> None:
    info = get_provider_info()
    for section in ("hooks", "operators", "sensors", "triggers"):
        for module in info[section][0]["python-modules"]:
            __import__(module)
    (conn_type,) = info["connection-types"]
    from airflow_provider_novita.hooks.novita import NovitaHook

    assert conn_type["hook-class-name"] == f"{NovitaHook.__module__}.{NovitaHook.__qualname__}"
    assert conn_type["connection-type"] == NovitaHook.conn_type == "novita"
    assert info["versions"] == [airflow_provider_novita.__version__]


def test_connection_form_shows_an_api_key_field_and_hides_the_rest() -> None:
    behaviour = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
    assert behaviour["relabeling"]["password"] == "API Key"
    assert {"schema", "port", "login", "extra"} <= set(behaviour["hidden-fields"])


def test_airflow_cli_lists_the_provider_and_its_connection_type() -> None:
    def airflow(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "airflow", "providers", *args], check=True, capture_output=True, text=True
        ).stdout

    assert "airflow-provider-novita" in airflow("list")
    (hook_line,) = [line for line in airflow("hooks").splitlines() if line.startswith("novita ")]
    assert "airflow_provider_novita.hooks.novita.NovitaHook" in hook_line
    assert "Novita AI" in hook_line
