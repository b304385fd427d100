"""The reference of pipeline.yaml, `docs/pipeline-reference.md`, generated from the vocabulary and the config model.

`python -m kpipe.reference > docs/pipeline-reference.md` regenerates the page; a unit test fails when it
is stale. Imports neither petl nor DuckDB.
"""

from __future__ import annotations

import types
from collections.abc import Container, Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from chalicelib import config as M
from kpipe.engine import plan, vocabulary

COMMAND = "python -m kpipe.reference > docs/pipeline-reference.md"

# What a key means where its model field has no `description` (a note naming no field fails the generation).
NOTES: dict[str, dict[str, str]] = {
    "PipelineConfig": dict(
        version="the format of this file", timezone="IANA zone: offsets are converted to it, naive times are in it, dates are taken in it",
        trigger="when an execution starts after files land", storage="the prefixes of the pipeline bucket",
        scale="how far a batch fans out", engine="which executor runs the plan",
        datasets="the inputs, validated in dependency order (a referenced dataset first)", kpis="the KPI tables, one DynamoDB table each"),
    "Trigger": dict(settle_seconds="how long an execution waits after the batch first looks complete"),
    "Storage": dict(
        raw="input files", validated="the valid rows of each batch", rejected="the rejected rows of each batch, with their reasons",
        processed="the processed store, partitioned on `partition_by`", archived="raw files once their batch is processed",
        reports="manifests and batch reports", quarantine="raw files of a rejected batch", config="the pipeline.yaml in force"),
    "Scale": dict(transform_concurrency="parallel transform tasks"),
    "Engine": dict(memory_limit="the DuckDB executor's memory limit"),
    "Dataset": dict(columns="the columns, found in each file by header name", derived="fields computed in order once a row's columns pass"),
    "Column": dict(
        type="its column type", source="the header name in the file; default: the column's own name",
        required="a null (empty) value rejects the row", unique="a later row of the batch with the same value is rejected",
        default="the value when the column is absent or the value is null", checks="checks on the non-null value",
        references="a dataset whose valid rows' key must hold the value"),
    "KpiTable": dict(key="the fields an item is keyed by (the first is the DynamoDB partition key; a date field among them is the period items are replaced by, else the table spans every date)",
                     index="a secondary index on one of the key fields", metrics="the item's attributes, in order (a ratio reads those above it)"),
    "Metric": dict(from_="the dataset an aggregate reads (a combining kind reads none)", where="filters a row must all pass: a check plus `field`",
                   round="decimal places, rounded half-up once when stored; default: the exact value"),
}
SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("Top level", M.PipelineConfig, "The keys of `pipeline.yaml`."),
    ("`trigger`", M.Trigger, "When an execution starts."),
    ("`storage`", M.Storage, "The prefixes of the pipeline bucket, each ending in `/`."),
    ("`scale`", M.Scale, "Map-state fan-out of the transform on AWS."),
    ("`engine`", M.Engine, M.Engine.__doc__ or ""),
    ("A dataset", M.Dataset, "One entry of `datasets`: the files of one input and the rules its rows must pass."),
    ("A column", M.Column, M.Column.__doc__ or ""),
    ("A KPI table", M.KpiTable, "One entry of `kpis`: one item per distinct key."),
    ("A metric", M.Metric, "One entry of a table's `metrics`: exactly one metric kind (see Metric kinds) plus these keys."),
]
NAMES: dict[Any, str] = {str: "text", int: "integer", bool: "boolean", Decimal: "number", M.Dataset: "dataset", M.Column: "column",
                         M.KpiTable: "KPI table", M.Metric: "metric", M.Check: "check", M.Condition: "filter", M.Derived: "derived field"}
PATTERNS = {M.Identifier.__metadata__[0].pattern: "name", M.Prefix.__metadata__[0].pattern: "prefix ending in `/`"}  # type: ignore[attr-defined]


def _type(ann: Any, meta: list[Any]) -> str:
    """A field's annotation as a reader says it: `integer 0 to 3600`, `list of checks`, `name → dataset`."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:
        return _type(args[0], [*args[1:], *meta])
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return "value" if set(rest) == set(get_args(vocabulary.Scalar)) else " or ".join(_type(a, meta) for a in rest)
    flat = [c for m in meta for c in (getattr(m, "metadata", None) or [m])]  # a Field(...) inside Annotated holds its bounds
    low = next((getattr(c, k) for c in flat for k in ("ge", "min_length") if getattr(c, k, None) is not None), None)
    high = next((getattr(c, k) for c in flat for k in ("le", "max_length") if getattr(c, k, None) is not None), None)
    span = f" {low} to {high}" if high is not None else f" (at least {low})" if low is not None else ""
    pattern = next((c.pattern for c in flat if getattr(c, "pattern", None)), None)
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (list, dict):
        return f"list of{span} {_type(args[0], [])}s" if origin is list else f"name → {_type(args[1], [])}{span}"
    if isinstance(ann, type) and issubclass(ann, BaseModel) and ann not in NAMES:
        title = next((t for t, model, _ in SECTIONS if model is ann), None)
        return f"mapping: see {title}" if title else "`{" + ", ".join(ann.model_fields) + "}`"
    return PATTERNS.get(pattern, f"text matching `{pattern}`") if pattern else NAMES.get(ann, str(ann)) + span


def _literal(value: Any, quote: str = "`") -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return "its defaults" if isinstance(value, BaseModel) else "unset" if value is None else f"{quote}{text}{quote}"


def _spec(name: str, shape: str, model: type[BaseModel] = M.Derived) -> str:
    """A term's YAML shape; a mapping's keys from its model: `{field, value, ignore_case: false}`, `{min, max}`."""
    spec = _first_spec(model.model_fields[name].annotation) if name in model.model_fields else None  # (a term the model lacks: a test's)
    if "mapping" not in shape or spec is None:
        return shape
    keys = ", ".join(n if f.is_required() or f.default is None else f"{n}: {_literal(f.default, '')}" for n, f in spec.model_fields.items())
    return shape.replace("mapping", "{" + keys + "}")


def _first_spec(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((found for a in get_args(annotation) if (found := _first_spec(a)) is not None), None)


def _table(header: str, rows: list[tuple[str, ...]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return ["", line(header.split(",")), "|" + "---|" * (header.count(",") + 1), *map(line, rows)]


def _keys(model: type[BaseModel], skip: Container[str]) -> list[str]:
    notes = NOTES.get(model.__name__, {})
    unknown = set(notes) - set(model.model_fields)
    assert not unknown, f"NOTES names {model.__name__}.{unknown}, no longer keys: update kpipe/reference.py"
    return _table("key,type,default,meaning", [
        (f"`{f.alias or n}`", _type(f.annotation, list(f.metadata)),
         "required" if f.is_required() else _literal(f.get_default(call_default_factory=True)), f.description or notes.get(n, ""))
        for n, f in model.model_fields.items() if n not in skip])


def reference_markdown() -> str:
    ref = {kind: [r for r in vocabulary.reference_rows() if r.kind == kind] for kind in ("type", "check", "row_check", "derived", "metric")}
    extra = "".join(f", plus `{n}` (default {_literal(f.default)})" for n, f in M.Check.model_fields.items() if n not in vocabulary.CHECKS)
    ranged = ", ".join(t.name for t in vocabulary.TYPES.values() if t.grammar and t.sql_null_reason == "range")
    unreal = "".join(f"; so is a `{t.name}` naming a day that does not exist" for t in vocabulary.TYPES.values() if t.sql_null_reason == "type")
    out = [
        "# pipeline.yaml reference", "",
        "`pipeline.yaml` is the only place a user changes what kpipe does: which files form a batch, the rules every row "
        "must pass and the KPIs computed from the valid ones. Nothing in it is evaluated as code: rules, derived fields "
        "and metrics come from the closed vocabulary below. `kpipe check-config` checks the file, listing every problem "
        "with its YAML path; editors complete it from `pipeline.schema.json`.", "",
        "This page is generated from the vocabulary (`kpipe/engine/vocabulary.py`) and the config model "
        f"(`chalicelib/config.py`) by `{COMMAND}`, and a unit test fails when it is stale: do not edit it by hand.",
    ]
    for title, model, intro in SECTIONS:
        out += ["", f"## {title}", "", " ".join(intro.split()), *_keys(model, vocabulary.METRICS if model is M.Metric else {})]
    out += ["", "## Column types", "", "A value is null when it is empty after stripping; its type reads a non-null one."]
    out += _table("type,meaning", [(f"`{r.name}`", r.meaning) for r in ref["type"]])
    out += ["", "## Checks", "", f"A check is a mapping with one of these keys{extra}. A row whose non-null value fails it is "
            "rejected with the check's rule id; a metric's `where` filters use the same checks. A `value` is text, a number "
            "or a boolean, read as the field's type."]
    out += _table("check,operand,applies to,meaning,rule id",
                  [(f"`{r.name}`", f"`{_spec(r.name, r.shape, M.Check)}`", r.applies_to, r.meaning, f"`<column>.{r.name}`") for r in ref["check"]])
    out += ["", "## Row checks", "", "An entry of a dataset's `checks` has exactly one of these keys. It reads columns of the row "
            "(derived fields are computed after the checks) once each column passed its own rules, and passes when a value "
            "it reads is null; a row failing it is rejected with its rule id, listed after every column's reasons."]
    out += _table("check,shape,reads,meaning,rule id", [
        (f"`{r.name}`", f"`{r.shape}`", r.applies_to, r.meaning, f"`{vocabulary.ROW_CHECKS[r.name].rule_shape}`") for r in ref["row_check"]])
    out += ["", "## Derived-field kinds", "", "An entry of a dataset's `derived` has exactly one of these keys."]
    out += _table("kind,shape,meaning", [(f"`{r.name}`", f"`{_spec(r.name, r.shape)}`", r.meaning) for r in ref["derived"]])
    out += ["", "## Metric kinds", "", "A metric has exactly one of these keys; an aggregate also names the dataset it reads (`from`)."]
    out += _table("kind,shape,reads,meaning", [
        (f"`{r.name}`", f"`{r.shape}`", "two metrics of the item" if vocabulary.METRICS[r.name].combines else r.applies_to or "any type",
         r.meaning) for r in ref["metric"]])
    out += ["", "## Row-level reasons", "", "A rejected row is written to the rejected output with every reason it has.", ""]
    out += [f"- `{rule}`: {meaning}" for rule, meaning in (
        (plan.MALFORMED, "the record has another number of fields than the header, or a stray quote"),
        (plan.ENCODING, "the record holds bytes that are not UTF-8"),
        ("<column>.missing_column", "the file's header lacks a required column: every row of the file gets it"),
        ("<column>.duplicate_column", "the file's header holds a column's header name twice: every row of the file gets it"),
        ("<column>.required", "a required column is null"),
        ("<column>.type", f"the text is not of the column's type{unreal}"),
        ("<column>.range", f"a value of the right form that does not fit its type ({ranged}: see Column types)"),
        (f"<column>.<{'|'.join(vocabulary.CHECKS)}>", "the non-null value fails that check"),
        *((term.rule_shape, f"the row fails a `{name}` row check (see Row checks)") for name, term in vocabulary.ROW_CHECKS.items()),
        ("<column>.unique", "a `unique` column's value is already held by an earlier row of the batch"),
        ("<column>.references", "the value is the key of no valid row of the referenced dataset in the batch"),
        ("<derived>.range", "a numeric derived field (a product) whose exact value does not fit 38 digits"),
    )]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
