"""The published JSON Schema (pipeline.schema.json) never drifts from the model, and it checks pipeline.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from chalicelib.config import json_schema
from kpipe.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads((REPO / "pipeline.schema.json").read_text(encoding="utf-8"))


def test_published_schema_equals_the_model() -> None:
    published = (REPO / "pipeline.schema.json").read_text(encoding="utf-8")
    assert published == json_schema(), "pipeline.schema.json is stale: regenerate it with `kpipe schema`"


def test_kpipe_schema_prints_the_published_schema() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == (REPO / "pipeline.schema.json").read_text(encoding="utf-8")


def test_schema_is_a_valid_json_schema(schema: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_pipeline_yaml_points_editors_at_the_schema(config_text: str) -> None:
    assert config_text.startswith("# yaml-language-server: $schema=./pipeline.schema.json")


def test_default_pipeline_yaml_validates_against_the_schema(schema: dict[str, Any], config_text: str) -> None:
    jsonschema.validate(yaml.safe_load(config_text), schema)


@pytest.mark.parametrize(("path", "value"), [
    (["colour"], "blue"),  # unknown top-level key
    (["datasets", "orders", "columns", "order_id", "type"], "float"),  # unknown type name
    (["datasets", "orders", "columns", "order_id", "minimum"], 3),  # unknown key deep inside
    (["storage", "raw"], "raw-data"),  # prefix without the trailing slash
    (["datasets", "orders", "reject_threshold"], 1.5),
    (["kpis", "OrderKPI", "metrics", "total_orders", "round"], "two"),
])
def test_schema_flags_what_editors_should_flag(schema: dict[str, Any], config_text: str, path: list[str],
                                               value: Any) -> None:
    data = yaml.safe_load(config_text)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)
