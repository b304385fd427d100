"""The petl executor: the plan read row by row, as docs/semantics.md says it, the reference.

A dataset's records are a lazy petl table (file then line order). Each row gets its typed values,
then its reasons in the plan's order, then its derived fields; valid rows go to Parquet, rejected ones
through the shared writer. A KPI table groups the validated rows by its key and reduces each group
with the vocabulary's Python aggregates. Every step calls the vocabulary's `py` implementation; the
DuckDB executor compiles the same plan to SQL, and the equivalence test holds the two together.
Fields this module adds to a row start with `#`, which no configured name can.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal, localcontext
from itertools import islice
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import petl
import pyarrow as pa
import pyarrow.parquet as pq

from chalicelib.config import Engine
from kpipe.engine.csvfiles import header, records, rejected_row, write_rejected
from kpipe.engine.plan import ColumnStep, DatasetPlan, DerivedStep, MetricStep, Plan, TablePlan
from kpipe.engine.results import DatasetResult, GroupValues, file_problems
from kpipe.engine.vocabulary import EXACT_DIGITS, INT64, NUMERIC, strip

POS, FILE, NAMES, FIELDS, GIVEN, READ, REASONS = "#pos", "#file", "#names", "#fields", "#given", "#read", "#reasons"
CHUNK = 10_000  # rows per Parquet write: memory stays flat in rows
COUNTS = ("count", "count_distinct")  # over no values these are 0, every other aggregate has no value (as in SQL)

Firsts = dict[str, dict[Any, dict[str, Any]]]  # per dataset, per key: its first valid row's key and looked-up fields


def arrow_type(kind: str, scale: int) -> pa.DataType:
    """A field's Parquet type, as the DuckDB executor writes it."""
    types = {"int": pa.int64(), "string": pa.string(), "datetime": pa.timestamp("us", tz="UTC"), "date": pa.date32(), "bool": pa.bool_()}
    return pa.decimal128(38, scale) if kind == "decimal" else types[kind]


class Records(petl.Table):
    """Every record of a dataset's files, in file then line order: `#pos` (file number, line), the file,
    its header, the record's fields (a short one padded with empty fields) and `#given`, the reasons the
    row has before its fields are read: its own (`row.encoding`, `row.malformed`) or its file's."""

    def __init__(self, ds: DatasetPlan, batch_dir: Path, rels: list[str]) -> None:
        self.ds, self.batch_dir, self.rels = ds, batch_dir, rels

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        yield (POS, FILE, NAMES, FIELDS, GIVEN)
        for fi, rel in enumerate(self.rels):
            path = self.batch_dir / rel
            names = header(path)
            if not names:  # an empty file has no rows
                continue
            whole = file_problems(self.ds, names)
            for line, fields, problem in records(path):
                if problem is None:
                    yield (fi, line), rel, names, fields + [""] * (len(names) - len(fields)), whole
                else:
                    yield (fi, line), rel, names, fields or [], [problem]


class ParquetRows(petl.Table):
    """The rows of validated Parquet files; with `partition`, its value comes from each file's Hive folder."""

    def __init__(self, paths: list[Path], partition: str | None) -> None:
        self.paths, self.partition = paths, partition

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        names = list(dict.fromkeys(n for p in self.paths for n in pq.read_schema(p).names))
        names += [self.partition] if self.partition and self.partition not in names else []
        yield tuple(names)
        for path in self.paths:
            folder = next((part for part in path.parts if self.partition and part.startswith(self.partition + "=")), None)
            for batch in pq.ParquetFile(path).iter_batches():
                for row in batch.to_pylist():
                    if folder is not None:
                        row[self.partition] = date.fromisoformat(folder.split("=", 1)[1])
                    yield tuple(row.get(n) for n in names)


class PetlExecutor:
    name = "petl"

    def __init__(self, engine: Engine, work_dir: Path, timezone: str = "UTC") -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.tz = ZoneInfo(timezone)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------------------------ validation

    def validate(self, plan: Plan, batch_dir: Path, files: dict[str, list[str]], out_dir: Path) -> dict[str, DatasetResult]:
        out_dir.mkdir(parents=True, exist_ok=True)
        firsts: Firsts = {}
        return {ds.name: self._validate_dataset(plan, ds, batch_dir, files.get(ds.name, []), out_dir, firsts) for ds in plan.datasets}

    def _validate_dataset(self, plan: Plan, ds: DatasetPlan, batch_dir: Path, rels: list[str], out_dir: Path, firsts: Firsts) -> DatasetResult:
        # each column's typed value (None: null, or not readable) and the reason reading it gave
        rows = Records(ds, batch_dir, rels).addfield(READ, lambda r: {} if r[GIVEN] else {c.name: self._read(c, r) for c in ds.columns})
        rows = rows.addfields([(c.name, lambda r, c=c: r[READ].get(c.name, (None, None))[0]) for c in ds.columns])
        claims = self._claims(ds, rows)
        rows = rows.addfield(REASONS, lambda r: r[GIVEN] or [why for c in ds.columns for why in self._rules(c, r, claims, firsts)]
                             + [s.rule for s in ds.row_checks if not s.passes([r[i] for i in s.inputs])])
        for d in ds.derived:  # in declaration order, each seeing the fields before it
            rows = rows.addfield(d.name, lambda r, d=d: None if r[REASONS] else self._derive(d, r, firsts))
        rows = rows.convert(REASONS, lambda reasons, r: reasons or self._out_of_range(ds, r), pass_row=True)

        tally: Counter[Any] = Counter()  # per reason, and per (file, "rows_valid" or "rows_rejected")
        valid = rows.select(lambda r: not r[REASONS])
        path = out_dir / f"{ds.name}.parquet"
        self._write_parquet(ds, valid.cut(FILE, *ds.fields), path, tally)

        def rejected() -> Iterator[list[str]]:
            for r in rows.select(lambda r: bool(r[REASONS])).records():
                tally.update([*r[REASONS], (r[FILE], "rows_rejected")])
                yield rejected_row(r[FILE], r[POS][1], r[REASONS], r[NAMES], r[FIELDS], ds)

        write_rejected(out_dir / "rejected" / f"{ds.name}.csv", ds, rejected())
        if any(c.references == ds.name for other in plan.datasets for c in other.columns):
            # what later datasets reference and look up: the first valid row of each key
            keep = list(dict.fromkeys([ds.key, *plan.lookups.get(ds.name, [])]))
            firsts[ds.name] = petl.dictlookupone(valid.cut(*keep), ds.key)
        files = {rel: {"rows_in": tally[rel, "rows_valid"] + tally[rel, "rows_rejected"], "rows_valid": tally[rel, "rows_valid"],
                       "rows_rejected": tally[rel, "rows_rejected"]} for rel in rels}  # fmt: skip
        reasons = {r: tally[r] for r in ds.rules() if r in tally}
        n_valid, n_rejected = (sum(stats[k] for stats in files.values()) for k in ("rows_valid", "rows_rejected"))
        return DatasetResult(n_valid, n_rejected, reasons, path, files)

    def _read(self, c: ColumnStep, r: Any) -> tuple[Any, str | None]:
        """A column's value: stripped, null -> default, else its type's grammar and parse."""
        text = strip(r[FIELDS][r[NAMES].index(c.header)]) if c.header in r[NAMES] else None  # an absent column is null
        if text is None:
            return c.default, f"{c.name}.required" if c.required else None
        if c.type.grammar is not None and not re.fullmatch(c.type.grammar, text):
            return None, f"{c.name}.type"
        try:
            value = c.type.parse(text, self.tz, c.scale)
        except ValueError:
            return None, f"{c.name}.type"
        return value, None if value is not None else f"{c.name}.range"

    @staticmethod
    def _claims(ds: DatasetPlan, rows: Any) -> dict[str, dict[Any, tuple[int, int]]]:
        """Per unique column, the first row (file, line) claiming each value; rows of a file with
        file-level problems or of a broken record claim nothing, a row rejected otherwise still claims."""
        claims: dict[str, dict[Any, tuple[int, int]]] = {c.name: {} for c in ds.columns if c.unique}
        if claims:
            for r in rows.records():
                for name, first in claims.items():
                    if not r[GIVEN] and r[name] is not None:
                        first.setdefault(r[name], r[POS])
        return claims

    @staticmethod
    def _rules(c: ColumnStep, r: Any, claims: dict[str, dict[Any, tuple[int, int]]], firsts: Firsts) -> list[str]:
        """A column's reasons, in the plan's order: required or type or range, checks, unique, references."""
        value, problem = r[READ][c.name]
        if problem is not None:
            return [problem]
        if value is None:
            return []
        out = [s.rule for s in c.checks if not s.term.py(value, s.operand, s.ignore_case)]
        if c.unique and claims[c.name][value] != r[POS]:
            out.append(f"{c.name}.unique")
        if c.references and value not in firsts[c.references]:
            out.append(f"{c.name}.references")
        return out

    def _derive(self, d: DerivedStep, r: Any, firsts: Firsts) -> Any:
        if d.via is None:
            value = d.term.py(d.spec, [r[i] for i in d.inputs], self.tz)
        else:  # a lookup: the field of the referenced dataset's first valid row with that key
            assert d.target is not None and d.target_field is not None
            found = firsts[d.target].get(r[d.via]) if r[d.via] is not None else None
            value = d.term.py(d.spec, [found[d.target_field] if found else None], self.tz)
        return fitted(d, value)

    @staticmethod
    def _out_of_range(ds: DatasetPlan, r: Any) -> list[str]:
        """A numeric derived field with all its inputs but no value did not fit its type."""
        return [
            f"{d.name}.range"
            for d in ds.derived
            if d.type in NUMERIC and d.via is None and r[d.name] is None and all(r[i] is not None for i in d.inputs)
        ]

    @staticmethod
    def _write_parquet(ds: DatasetPlan, valid: Any, path: Path, tally: Counter[Any]) -> None:
        """The valid rows (their file, then their fields) as Parquet, CHUNK rows at a time."""
        types = [arrow_type(c.type.name, c.scale) for c in ds.columns] + [arrow_type(d.type, d.scale) for d in ds.derived]
        schema = pa.schema(list(zip(ds.fields, types, strict=True)))
        with pq.ParquetWriter(path, schema) as writer:
            data = iter(valid.data())
            while chunk := list(islice(data, CHUNK)):
                tally.update((file, "rows_valid") for file, *_ in chunk)
                writer.write_table(pa.Table.from_pylist([dict(zip(ds.fields, row[1:], strict=True)) for row in chunk], schema=schema))

    # ----------------------------------------------------------------------------------------- KPIs

    def aggregate(self, plan: Plan, table: TablePlan, sources: dict[str, list[Path]], partition: str | None) -> GroupValues:
        """Per group key (as text), per aggregate metric of the table, its value over the group's rows."""
        out: GroupValues = {}
        for source in table.sources:
            paths = sources.get(source) or []
            if not paths:
                continue
            steps = table.aggregates(source)
            keyed = ParquetRows(paths, partition).select(lambda r: all(r[k] is not None for k in table.key))
            grouped = petl.aggregate(keyed, list(table.key), {m.name: (lambda rows, m=m: metric(m, rows)) for m in steps})
            for row in grouped.data():
                key = tuple(self._key_text(v) for v in row[: len(table.key)])
                out.setdefault(key, {}).update(zip((m.name for m in steps), row[len(table.key) :], strict=True))
        return out

    def null_keys(self, table: TablePlan, source: str, paths: list[Path], partition: str | None) -> int:
        if not paths:
            return 0
        return petl.nrows(ParquetRows(paths, partition).select(lambda r: any(r[k] is None for k in table.key)))

    def _key_text(self, value: Any) -> str:
        if isinstance(value, datetime):
            return value.astimezone(self.tz).isoformat()
        return value.isoformat() if isinstance(value, date) else str(value)


def metric(m: MetricStep, rows: list[Any]) -> Any:
    """An aggregate over the non-null values of its field in the rows its `where` filters keep."""
    kept = [r for r in rows if all(r[f.field] is not None and f.term.py(r[f.field], f.operand, f.ignore_case) for f in m.where)]
    values = [r[m.field] for r in kept if r[m.field] is not None]
    if not values:
        return 0 if m.term.name in COUNTS else None
    return m.term.py(values)


def fitted(d: DerivedStep, value: Any) -> Any:
    """A numeric derived value held in its type (decimal: quantized to its scale), None when it does not fit."""
    if value is None or d.type not in NUMERIC:
        return value
    if d.type == "int":
        return value if INT64[0] <= value <= INT64[1] else None
    with localcontext(prec=EXACT_DIGITS):
        held = Decimal(value).quantize(Decimal(1).scaleb(-d.scale))
    return held if held == value and abs(held) < Decimal(10) ** (38 - d.scale) else None
