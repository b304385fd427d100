"""The reference of pipeline.yaml, `docs/pipeline-reference.md`, generated from the vocabulary and the config model.

`python -m kpipe.engine.reference > docs/pipeline-reference.md` regenerates the page; a unit test fails when it
is stale. Imports neither petl nor DuckDB.
"""

from __future__ import annotations

import types
from decimal import Decimal
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from chalicelib import config
from kpipe.engine import plan, vocabulary

COMMAND = "python -m kpipe.engine.reference > docs/pipeline-reference.md"

# What a key means where the model's field carries no `description` (a note naming no field fails the generation).
NOTES = {
    "PipelineConfig.version": "the format of this file",
    "PipelineConfig.timezone": "IANA zone: offsets are converted to it, naive timestamps are in it, dates are taken in it",
    "PipelineConfig.trigger": "when an execution starts after files land",
    "PipelineConfig.storage": "the prefixes of the pipeline bucket",
    "PipelineConfig.scale": "how far a batch fans out",
    "PipelineConfig.engine": "which executor runs the plan",
    "PipelineConfig.datasets": "the input datasets, validated in dependency order (a referenced one first)",
    "PipelineConfig.kpis": "the KPI tables, one DynamoDB table each",
    "Trigger.settle_seconds": "how long an execution waits after the batch first looks complete",
    "Storage.raw": "input files",
    "Storage.validated": "the valid rows of each batch",
    "Storage.rejected": "the rejected rows of each batch, with their reasons",
    "Storage.processed": "the processed store, partitioned on `partition_by`",
    "Storage.archived": "raw files once their batch is processed",
    "Storage.reports": "manifests and batch reports",
    "Storage.quarantine": "raw files of a rejected batch",
    "Storage.config": "the pipeline.yaml in force",
    "Scale.validate_concurrency": "parallel validation tasks (worker processes on a laptop)",
    "Scale.transform_concurrency": "parallel transform tasks (worker processes on a laptop)",
    "Engine.memory_limit": "the DuckDB executor's memory limit",
    "Dataset.columns": "the columns, found in each file by header name",
    "Dataset.derived": "fields computed, in order, from a row whose columns passed their rules",
    "Column.type": "its column type",
    "Column.source": "the header name in the file; default: the column's own name",
    "Column.required": "a null (empty) value rejects the row",
    "Column.unique": "a later row of the batch with the same value is rejected",
    "Column.default": "the value when the column is absent or the value is null",
    "Column.checks": "checks on the non-null value",
    "Column.references": "a dataset whose valid rows' key must hold the value",
    "KpiTable.key": "the fields an item is keyed by (partition, then sort key); must include the partition field",
    "KpiTable.index": "a secondary index on one of the key fields",
    "KpiTable.metrics": "the item's attributes, in order (a combining kind reads metrics above it)",
    "Metric.from_": "the dataset an aggregate reads (a combining kind reads none)",
    "Metric.where": "filters on that dataset's fields, all of which a row must pass: a check plus `field`",
    "Metric.round": "decimal places, rounded half-up once when stored; default: the exact value",
}
M = config
SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("Top level", M.PipelineConfig, "The keys of `pipeline.yaml`."),
    ("`trigger`", M.Trigger, "When an execution starts."),
    ("`storage`", M.Storage, "The prefixes of the pipeline bucket, each ending in `/`."),
    ("`scale`", M.Scale, "Map-state fan-out on AWS (and worker processes on a laptop)."),
    ("`engine`", M.Engine, M.Engine.__doc__ or ""),
    ("A dataset", M.Dataset, "One entry of `datasets`: the files of one input and the rules its rows must pass."),
    ("A column", M.Column, M.Column.__doc__ or ""),
    ("A KPI table", M.KpiTable, "One entry of `kpis`: one item per distinct key."),
    ("A metric", M.Metric, "One entry of a table's `metrics`: exactly one metric kind (below) plus these keys."),
]
NAMES: dict[Any, str] = {str: "text", int: "integer", bool: "boolean", Decimal: "number", vocabulary.Scalar: "value",
                         M.Dataset: "dataset", M.Column: "column", M.KpiTable: "KPI table", M.Metric: "metric",
                         M.Check: "check", M.Condition: "filter", M.Derived: "derived field"}
PATTERNS = {M.Identifier.__metadata__[0].pattern: "name", M.Prefix.__metadata__[0].pattern: "prefix ending in `/`"}  # type: ignore[attr-defined]


def _type(ann: Any, meta: list[Any]) -> str:
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:
        return _type(args[0], [*args[1:], *meta])
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return "value" if set(rest) == set(get_args(vocabulary.Scalar)) else " or ".join(_type(a, meta) for a in rest)
    flat = [c for m in meta for c in (getattr(m, "metadata", None) or [m])]
    bound = {k: getattr(c, k) for c in flat for k in ("ge", "le", "min_length", "max_length") if getattr(c, k, None) is not None}
    span = f" {bound.get('ge', bound.get('min_length', ''))}–{bound.get('le', bound.get('max_length', 'any'))}" if bound else ""
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of{span} {_type(args[0], [])}s"
    if origin is dict:
        return f"name → {_type(args[1], [])}" + (" (at least one)" if span else "")
    if origin is tuple:
        return "[" + ", ".join(_type(a, []) for a in args) + "]"
    if isinstance(ann, type) and issubclass(ann, BaseModel) and ann not in NAMES:
        title = next((t for t, model, _ in SECTIONS if model is ann), None)
        return f"mapping: see {title}" if title else "`{" + ", ".join(ann.model_fields) + "}`"
    pattern = next((c.pattern for c in flat if getattr(c, "pattern", None)), None)
    if pattern:
        return PATTERNS.get(pattern, f"text matching `{pattern}`")
    return NAMES.get(ann, str(ann)) + span


def _plain(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _literal(value: Any) -> str:
    return "its defaults" if isinstance(value, BaseModel) else "unset" if value is None else f"`{_plain(value)}`"


def _spec(name: str) -> str | None:
    """A mapping-shaped derived kind's keys, from its model: `{field, value, ignore_case: false}`."""
    spec = next((a for a in get_args(M.Derived.model_fields[name].annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return None if spec is None else "{" + ", ".join(
        n if f.is_required() else f"{n}: {_plain(f.default)}" for n, f in spec.model_fields.items()) + "}"


def _keys(model: type[BaseModel], skip: set[str]) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        default = "required" if f.is_required() else _literal(f.get_default(call_default_factory=True))
        meaning = f.description or NOTES.get(f"{model.__name__}.{name}", "")
        rows.append(_row(f"`{f.alias or name}`", _type(f.annotation, list(f.metadata)), default, meaning))
    return rows


def _row(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _table(header: str, rows: list[tuple[str, ...]]) -> list[str]:
    return [f"| {' | '.join(header.split(','))} |", "|" + "---|" * len(header.split(",")), *(_row(*r) for r in rows)]


def reference_markdown() -> str:
    for note in NOTES:
        model, name = note.split(".")
        assert name in getattr(config, model).model_fields, f"NOTES names {note}, which is no longer a key"
    ref = {kind: [r for r in vocabulary.reference_rows() if r.kind == kind] for kind in ("type", "check", "derived", "metric")}
    extra = {n: f for n, f in M.Check.model_fields.items() if n not in vocabulary.CHECKS}
    ranged = [t.name for t in vocabulary.TYPES.values() if t.grammar and t.sql_null_reason == "range"]
    unreal = [t.name for t in vocabulary.TYPES.values() if t.sql_null_reason == "type"]
    out = [
        "# pipeline.yaml reference", "",
        "`pipeline.yaml` is the only place a user changes what kpipe does: which files form a batch, the rules every row "
        "must pass and the KPIs computed from the valid ones. Nothing in it is evaluated as code: rules, derived fields "
        "and metrics come from the closed vocabulary below. `kpipe check-config` checks the file, listing every problem "
        "with its YAML path; editors complete it from `pipeline.schema.json`.", "",
        f"This page is generated from the vocabulary (`kpipe/engine/vocabulary.py`) and the config model "
        f"(`chalicelib/config.py`) by `{COMMAND}`; a unit test fails when it is stale. Do not edit it by hand.",
    ]
    for title, model, intro in SECTIONS:
        skip = set(vocabulary.METRICS) if model is M.Metric else set()
        out += ["", f"## {title}", "", " ".join(intro.split()), "", *_keys(model, skip)]
    out += ["", "## Column types", "", "A value is null when it is empty after stripping; the type reads a non-null one.", ""]
    out += _table("type,meaning", [(f"`{r.name}`", r.meaning) for r in ref["type"]])
    out += ["", "## Checks", "", "A check is a mapping with one of these keys"
            + "".join(f", plus `{n}` (default {_literal(f.default)})" for n, f in extra.items())
            + ". A row whose non-null value fails it is rejected with the rule id; a metric's `where` filters use the "
            "same checks. A `value` is text, a number or a boolean, read as the field's type.", ""]
    out += _table("check,operand,applies to,meaning,rule id",
                  [(f"`{r.name}`", f"`{r.shape}`", r.applies_to, r.meaning, f"`<column>.{r.name}`") for r in ref["check"]])
    out += ["", "## Derived-field kinds", "", "Each entry of a dataset's `derived` has exactly one of these keys.", ""]
    out += _table("kind,shape,meaning", [(f"`{r.name}`", f"`{(r.shape == 'mapping' and _spec(r.name)) or r.shape}`", r.meaning)
                                         for r in ref["derived"]])
    out += ["", "## Metric kinds", "", "A metric has exactly one of these keys; an aggregate also names the dataset it reads (`from`).", ""]
    out += _table("kind,shape,reads,meaning", [
        (f"`{r.name}`", f"`{r.shape}`", "two metrics of the item" if vocabulary.METRICS[r.name].combines else r.applies_to or "any type",
         r.meaning) for r in ref["metric"]])
    reasons = [
        (plan.MALFORMED, "the record has another number of fields than the header, or a stray quote"),
        (plan.ENCODING, "the record holds bytes that are not UTF-8"),
        ("<column>.missing_column", "the file's header lacks a required column: every row of the file gets it"),
        ("<column>.duplicate_column", "the file's header names a column's header twice: every row of the file gets it"),
        ("<column>.required", "a required column is null"),
        ("<column>.type", "the text is not of the column's type" + "".join(f"; a `{t}` naming a day that does not exist too" for t in unreal)),
        ("<column>.range", f"a value of the right form that does not fit its type ({', '.join(ranged)}: see Column types)"),
        (f"<column>.<{'|'.join(vocabulary.CHECKS)}>", "the non-null value fails that check"),
        ("<column>.unique", "a `unique` column's value is already held by an earlier row of the batch"),
        ("<column>.references", "the value is the key of no valid row of the referenced dataset in the batch"),
        ("<derived>.range", "a numeric derived field (a product) whose exact value does not fit 38 digits"),
    ]
    out += ["", "## Row-level reasons", "", "A rejected row is written to the rejected output with every reason it has:", ""]
    out += [f"- `{rule}`: {meaning}" for rule, meaning in reasons]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
