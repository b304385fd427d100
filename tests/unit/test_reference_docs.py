"""docs/pipeline-reference.md is generated from the vocabulary and the config model, and never drifts from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.config import Column, Dataset, KpiTable, PipelineConfig
from kpipe.engine import vocabulary
from kpipe.reference import COMMAND, reference_markdown

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "pipeline-reference.md"


def test_published_reference_equals_the_generated_one() -> None:
    assert PAGE.read_text(encoding="utf-8") == reference_markdown(), f"docs/pipeline-reference.md is stale: regenerate it with `{COMMAND}`"


def test_the_command_prints_the_page_without_loading_petl_or_duckdb() -> None:
    script = (
        "import runpy, sys; runpy.run_module('kpipe.reference', run_name='__main__');"
        "sys.stdout.flush(); loaded = {'petl', 'duckdb'} & set(sys.modules); assert not loaded, loaded"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == PAGE.read_text(encoding="utf-8")


def test_generation_is_deterministic() -> None:
    assert reference_markdown() == reference_markdown()


@pytest.mark.parametrize("registry", [vocabulary.TYPES, vocabulary.CHECKS, vocabulary.ROW_CHECKS, vocabulary.DERIVED, vocabulary.METRICS],
                         ids=["types", "checks", "row_checks", "derived", "metrics"])
def test_every_registry_term_is_in_the_page(registry: dict[str, object]) -> None:
    page = PAGE.read_text(encoding="utf-8")
    for name, term in registry.items():
        assert f"| `{name}` |" in page, f"{name} has no row in docs/pipeline-reference.md"
        assert term.meaning in page, f"the meaning of {name} is not in docs/pipeline-reference.md"  # type: ignore[attr-defined]


def test_every_check_has_its_rule_id() -> None:
    page = reference_markdown()
    for name in vocabulary.CHECKS:
        assert f"`<column>.{name}`" in page


@pytest.mark.parametrize("model", [PipelineConfig, Dataset, Column, KpiTable])
def test_every_config_key_is_documented(model: type) -> None:
    page = reference_markdown()
    for name, field in model.model_fields.items():
        assert f"| `{field.alias or name}` |" in page


def test_every_key_has_a_meaning() -> None:
    """A model field without `description` needs a note in reference.NOTES (or, better, a description)."""
    empty = [line for line in reference_markdown().splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not empty, f"keys without a meaning: {empty}"


def test_metric_keys_beyond_the_kinds() -> None:
    page = reference_markdown()
    section = page.split("## A metric", 1)[1].split("##", 1)[0]
    for key in ("from", "where", "round", "store"):
        assert f"| `{key}` |" in section
    assert "| `sum` |" not in section  # the kinds have their own table


def test_row_level_reasons_are_listed() -> None:
    page = reference_markdown()
    for reason in ("row.malformed", "row.encoding", "<column>.missing_column", "<column>.duplicate_column",
                   "<column>.required", "<column>.type", "<column>.range", "<column>.unique", "<column>.references",
                   "<derived>.range"):
        assert f"- `{reason}`:" in page


def test_shapes_read_as_yaml() -> None:
    page = reference_markdown()
    assert "| `between` | `[low, high]` |" in page
    assert "| `one_of` | `[value, ...]` |" in page
    assert "| `multiply` | `[field, field]` |" in page
    assert "| `ratio` | `[metric, metric]` |" in page
    assert "| `equals` | `{field, value, ignore_case: false}` |" in page
    assert "decimal.Decimal" not in page and "tuple" not in page


def test_a_new_check_appears_in_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    term = vocabulary.CheckTerm(
        "starts_with",
        "begins with the operand",
        str,
        ("string",),
        lambda v, o, _ic: v.startswith(o),
        lambda x, o, _t, _ic: f"starts_with({x}, {vocabulary.sql_literal(o)})",
    )
    assert "starts_with" not in reference_markdown()
    monkeypatch.setitem(vocabulary.CHECKS, "starts_with", term)
    page = reference_markdown()
    assert "| `starts_with` | `text` | string | begins with the operand | `<column>.starts_with` |" in page
    assert "|one_of|matches|length|starts_with>`" in page  # and among the row-level reasons
    assert page != PAGE.read_text(encoding="utf-8")  # so the stale-page test would fail until regenerated
