"""The DuckDB executor: the plan as SQL over the raw CSV files, the default.

Every file is read once by DuckDB's CSV reader in strict mode, all fields as VARCHAR, with the file's
own header for the column list (no sniffing: the sniffer dominated on many files). Structurally
broken records land in DuckDB's rejects table with their record number; the reference grammar of
each value is the vocabulary's regular expression, checked before DuckDB's own (more lenient) casts.
One query per dataset then gives each row its typed values, its reasons in rule order, and its
derived fields; valid rows go to Parquet, rejected ones (usually few) through the shared writer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from chalicelib.config import Engine
from kpipe.engine.csvfiles import header, interior_blank, records, rejected_row, write_rejected
from kpipe.engine.plan import ColumnStep, DatasetPlan, DerivedStep, Plan, TablePlan
from kpipe.engine.results import DatasetResult, GroupValues, file_problems
from kpipe.engine.vocabulary import FIELD_SQL_TYPES, NUMERIC, TYPES, WHITESPACE, sql_literal, sql_text

_WS = sql_text(WHITESPACE)


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def field_sql_type(kind: str, scale: int) -> str:
    return TYPES[kind].sql_type(scale) if kind in TYPES else FIELD_SQL_TYPES[kind]


class DuckDBExecutor:
    name = "duckdb"

    def __init__(self, engine: Engine, work_dir: Path, timezone: str = "UTC") -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(config={"preserve_insertion_order": True})
        threads = engine.threads or len(os.sched_getaffinity(0))
        self.con.execute(f"SET memory_limit = {sql_text(engine.memory_limit)}")
        self.con.execute(f"SET threads = {int(threads)}")
        self.con.execute(f"SET temp_directory = {sql_text(str(engine.temp_directory or self.work_dir / 'spill'))}")
        self.con.execute(f"SET TimeZone = {sql_text(timezone)}")
        self._files = 0

    def close(self) -> None:
        self.con.close()

    # ------------------------------------------------------------------------------------ validation

    def validate(self, plan: Plan, batch_dir: Path, files: dict[str, list[str]], out_dir: Path) -> dict[str, DatasetResult]:
        out_dir.mkdir(parents=True, exist_ok=True)
        results: dict[str, DatasetResult] = {}
        for ds in plan.datasets:
            results[ds.name] = self._validate_dataset(plan, ds, batch_dir, files.get(ds.name, []), out_dir)
        return results

    def _read_files(self, ds: DatasetPlan, batch_dir: Path, rels: list[str]) -> tuple[str, list[tuple[str, list[str]]], list[list[Any]]]:
        """One temp table of every record of the dataset's files that DuckDB could split into fields:
        `_f` (file number), `_line`, `_whole` (file-level reasons), then each declared column's raw
        text (`c_<name>`) and every field of the record (`f<i>`, for the rejected file). Returns its
        name, each file's (name, header), and the structurally rejected records."""
        table = f"raw_{ds.name}"
        selects: list[str] = []
        headers: list[tuple[str, list[str]]] = []
        structural: list[list[Any]] = []
        width = max([len(header(batch_dir / r)) for r in rels] or [0])
        for fi, rel in enumerate(rels):
            path = batch_dir / rel
            names = header(path)
            headers.append((rel, names))
            if not names:
                continue
            whole = file_problems(ds, names)
            self._files += 1
            tag = f"{ds.name}_{self._files}"
            cols = ", ".join(f"{sql_text(f'f{i}')}: 'VARCHAR'" for i in range(len(names)))
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE file_{tag} AS SELECT * FROM read_csv({sql_text(str(path))}, header = true,"
                f" auto_detect = false, columns = {{{cols}}}, delim = ',', quote = '\"', escape = '\"', strict_mode = true,"
                f" store_rejects = true, rejects_table = 'rj_{tag}', rejects_scan = 'rs_{tag}')"
            )
            refused = {line for (line,) in self.con.execute(f"SELECT line FROM rj_{tag}").fetchall()}
            source = f"file_{tag}"
            line = "(t.rowid + 2)"
            # a one-column file: DuckDB reads a blank line as a row with a null field, csv as no row
            if refused or interior_blank(path) or len(names) == 1:
                source, line = self._reread(tag, path, rel, names, refused, ds, structural), "t._line"
            declared = [f"{self._raw(c, names)} AS {q('c_' + c.name)}" for c in ds.columns]
            fields = [f"t.f{i} AS f{i}" if i < len(names) else f"NULL::VARCHAR AS f{i}" for i in range(width)]
            more = "t._more" if source != f"file_{tag}" else "NULL::VARCHAR[]"
            whole_sql = f"[{', '.join(sql_text(r) for r in whole)}]::VARCHAR[]" if whole else "[]::VARCHAR[]"
            selects.append(
                f"SELECT {fi} AS _f, {line} AS _line, {whole_sql} AS _whole, {', '.join(declared + fields)}, {more} AS _more FROM {source} t"
            )
        if not selects:
            cols = ", ".join(
                [f"NULL::VARCHAR AS {q('c_' + c.name)}" for c in ds.columns] + [f"NULL::VARCHAR AS f{i}" for i in range(width)] + ["NULL::VARCHAR[] AS _more"]
            )
            selects.append(f"SELECT 0 AS _f, 0::BIGINT AS _line, []::VARCHAR[] AS _whole, {cols} WHERE false")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS " + " UNION ALL ".join(selects))
        return table, headers, structural

    def _reread(self, tag: str, path: Path, rel: str, names: list[str], refused: set[int], ds: DatasetPlan, structural: list[list[str]]) -> str:
        """A file DuckDB's strict reader refused records of, or with blank lines inside (so its rows'
        order does not give their record numbers): the records as the reference reader reads them,
        numbered, in a table of the same shape (`_more`: fields past the header's, for the rejected file).
        Only such files take this slower way; the usual export never does."""
        width = len(names)
        columns: dict[str, list[Any]] = {"_line": [], **{f"f{i}": [] for i in range(width)}, "_more": []}
        for line, fields, problem in records(path):
            if problem is not None:
                structural.append(rejected_row(rel, line, [problem], names, fields or [], ds))
                continue
            assert fields is not None
            columns["_line"].append(line)
            for i in range(width):
                columns[f"f{i}"].append(fields[i] if i < len(fields) and fields[i] != "" else None)
            columns["_more"].append(fields[width:] or None)
        table = pa.table(
            {name: pa.array(values, pa.int64() if name == "_line" else pa.list_(pa.string()) if name == "_more" else pa.string())
             for name, values in columns.items()}
        )
        self.con.register(f"arrow_{tag}", table)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE reread_{tag} AS SELECT * FROM arrow_{tag}")
        self.con.unregister(f"arrow_{tag}")
        return f"reread_{tag}"

    @staticmethod
    def _raw(col: ColumnStep, names: list[str]) -> str:
        return f"t.f{names.index(col.header)}" if col.header in names else "NULL::VARCHAR"

    @staticmethod
    def dataset_sql(plan: Plan, ds: DatasetPlan, raw: str) -> str:
        """The query giving every row of `raw` its typed values, `_reasons` and derived fields."""
        typed: list[str] = []
        reasons: list[str] = []
        joins: list[str] = []
        for c in ds.columns:
            s = q(f"s_{c.name}")
            term = c.type
            default = sql_literal(c.default) if c.default is not None else "NULL"
            # inside the subquery: the typed value and whether the text broke the grammar
            if term.grammar is None:
                typed.append(f"coalesce({s}, {default}) AS {q(c.name)}")
            else:
                grammar = f"regexp_full_match({s}, {sql_text(term.grammar)})"
                typed.append(
                    f"CASE WHEN {s} IS NULL THEN {default}::{c.sql_type} WHEN {grammar} THEN {term.sql_parse(s, c.scale)} END AS {q(c.name)}"
                )
                typed.append(f"({s} IS NOT NULL AND NOT {grammar}) AS {q('bad_' + c.name)}")
            # outside: the reasons, over the subquery's columns (t) and the joined keys
            s, v, bad = f"t.{s}", f"t.{q(c.name)}", f"t.{q('bad_' + c.name)}"
            if c.required:
                reasons.append(f"CASE WHEN {s} IS NULL THEN '{c.name}.required' END")
            if term.grammar is not None:
                present = f"{s} IS NOT NULL"
                if term.sql_null_reason == "type":
                    reasons.append(f"CASE WHEN {bad} OR ({present} AND {v} IS NULL) THEN '{c.name}.type' END")
                else:
                    reasons.append(f"CASE WHEN {bad} THEN '{c.name}.type' END")
                    reasons.append(f"CASE WHEN {present} AND NOT {bad} AND {v} IS NULL THEN '{c.name}.{term.sql_null_reason}' END")
            for step in c.checks:
                cond = step.term.sql(v, step.operand, c.type.name, step.ignore_case)
                reasons.append(f"CASE WHEN {v} IS NOT NULL AND NOT {cond} THEN '{step.rule}' END")
            if c.unique:
                reasons.append(
                    f"CASE WHEN {v} IS NOT NULL AND len(t._whole) = 0 AND row_number() OVER"
                    f" (PARTITION BY {v}, len(t._whole) = 0 ORDER BY t._f, t._line) > 1 THEN '{c.name}.unique' END"
                )
            if c.references:
                target = plan.dataset(c.references)
                alias = f"ref_{c.name}"
                joins.append(f"LEFT JOIN keys_{target.name} {alias} ON {alias}.{q(target.key)} = {v}")
                reasons.append(f"CASE WHEN {v} IS NOT NULL AND {alias}.{q(target.key)} IS NULL THEN '{c.name}.references' END")
        stripped = ", ".join(f"NULLIF(trim({q('c_' + c.name)}, {_WS}), '') AS {q('s_' + c.name)}" for c in ds.columns)
        names = ", ".join(f"t.{q(c.name)}" for c in ds.columns)
        rule_list = "list_filter([" + ", ".join(reasons or ["NULL"]) + "]::VARCHAR[], lambda x: x IS NOT NULL)"
        checked = (
            f"SELECT t.*, CASE WHEN len(t._whole) > 0 THEN t._whole ELSE {rule_list} END AS _rules"
            f" FROM (SELECT *, {', '.join(typed)} FROM (SELECT *, {stripped} FROM {raw})) t {' '.join(joins)}"
        )
        derived = DuckDBExecutor._derived_sql(plan, ds)
        return f"SELECT t._f, t._line, t._rules, {names}{derived['select']} FROM ({checked}) t {derived['joins']}"

    @staticmethod
    def _derived_sql(plan: Plan, ds: DatasetPlan, lookups: bool = True) -> dict[str, str]:
        """Derived fields in declaration order, each over the fields before it (inlined). Without
        `lookups`, a looked-up field is the value `t` already holds (stored rows keep theirs)."""
        exprs: dict[str, str] = {c.name: f"t.{q(c.name)}" for c in ds.columns}
        selects, joins = [], []
        for d in ds.derived:
            if d.via is not None and not lookups:
                exprs[d.name] = f"t.{q(d.name)}"
                selects.append(f"{exprs[d.name]} AS {q(d.name)}")
                continue
            expr = DuckDBExecutor._derive(plan, d, exprs, joins)
            if d.type in NUMERIC:  # a product past its type's range is NULL here, its own reason below
                expr = f"TRY(CAST({expr} AS {field_sql_type(d.type, d.scale)}))"
            exprs[d.name] = f"({expr})"
            selects.append(f"{exprs[d.name]} AS {q(d.name)}")
        return {"select": "".join(f", {s}" for s in selects), "joins": " ".join(joins)}

    @staticmethod
    def _derive(plan: Plan, d: DerivedStep, exprs: dict[str, str], joins: list[str]) -> str:
        if d.via is None:
            return d.term.sql(d.spec, [exprs[i] for i in d.inputs])
        assert d.target is not None and d.target_field is not None
        target = plan.dataset(d.target)
        alias = f"look_{d.name}"
        joins.append(f"LEFT JOIN keys_{target.name} {alias} ON {alias}.{q(target.key)} = {exprs[d.via]}")
        return f"{alias}.{q(d.target_field)}"

    def _validate_dataset(self, plan: Plan, ds: DatasetPlan, batch_dir: Path, rels: list[str], out_dir: Path) -> DatasetResult:
        raw, headers, structural = self._read_files(ds, batch_dir, rels)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE checked_{ds.name} AS {self.dataset_sql(plan, ds, raw)}")
        range_rules = [d for d in ds.derived if d.type in NUMERIC and d.via is None]
        if range_rules:  # a derived decimal that does not fit its type is its own reason
            fix = " || ".join(
                f"CASE WHEN {q(d.name)} IS NULL AND len(_rules) = 0 AND {self._inputs_present(d)} THEN ['{d.name}.range'] ELSE [] END"
                for d in range_rules
            )
            self.con.execute(f"UPDATE checked_{ds.name} SET _rules = _rules || {fix}")
        fields = ds.fields
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE valid_{ds.name} AS SELECT {', '.join(q(f) for f in fields)}"
            f" FROM checked_{ds.name} WHERE len(_rules) = 0 ORDER BY _f, _line"
        )
        if ds.name in plan.lookups or any(c.references for other in plan.datasets for c in other.columns if c.references == ds.name):
            # what later datasets join to: the first valid row of each key
            keep = ", ".join(q(f) for f in dict.fromkeys([ds.key, *plan.lookups.get(ds.name, [])]))
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE keys_{ds.name} AS SELECT {keep} FROM valid_{ds.name}"
                f" QUALIFY row_number() OVER (PARTITION BY {q(ds.key)} ORDER BY rowid) = 1"
            )
        path = out_dir / f"{ds.name}.parquet"
        self.con.execute(f"COPY valid_{ds.name} TO {sql_text(str(path))} (FORMAT parquet)")
        counts = dict(
            self.con.execute(
                f"SELECT r, count(*) FROM (SELECT unnest(_rules) AS r FROM checked_{ds.name}) GROUP BY r"
            ).fetchall()
        )
        n_valid, n_rejected = self.con.execute(
            f"SELECT count(*) FILTER (WHERE len(_rules) = 0), count(*) FILTER (WHERE len(_rules) > 0) FROM checked_{ds.name}"
        ).fetchone() or (0, 0)
        per_file = {rel: {"rows_in": 0, "rows_valid": 0, "rows_rejected": 0} for rel, _ in headers}
        for fi, valid, bad in self.con.execute(
            f"SELECT _f, count(*) FILTER (WHERE len(_rules) = 0), count(*) FILTER (WHERE len(_rules) > 0) FROM checked_{ds.name} GROUP BY _f"
        ).fetchall():
            per_file[headers[fi][0]].update(rows_valid=int(valid), rows_rejected=int(bad))
        for row in structural:
            per_file[row[0]]["rows_rejected"] += 1
        for stats in per_file.values():
            stats["rows_in"] = stats["rows_valid"] + stats["rows_rejected"]
        rejected = self._rejected(ds, headers, structural)
        for row in structural:
            for reason in row[2].split(";"):
                counts[reason] = counts.get(reason, 0) + 1
        write_rejected(out_dir / "rejected" / f"{ds.name}.csv", ds, rejected)
        return DatasetResult(
            rows_valid=int(n_valid),
            rows_rejected=int(n_rejected) + len(structural),
            reasons={r: counts[r] for r in ds.rules() if r in counts},
            valid_path=path,
            files=per_file,
        )

    @staticmethod
    def _inputs_present(d: DerivedStep) -> str:
        return " AND ".join(f"{q(i)} IS NOT NULL" for i in d.inputs) or "TRUE"

    def _rejected(self, ds: DatasetPlan, headers: list[tuple[str, list[str]]], structural: list[list[str]]) -> Iterator[list[str]]:
        """Rejected rows in file and line order: the rule-rejected ones from the query, merged with the
        structurally broken ones the reference reader gave back."""
        width = max([len(n) for _, n in headers] or [0])
        fields = ", ".join(f"r.f{i}" for i in range(width))
        cur = self.con.execute(
            f"SELECT c._f, c._line, c._rules, r._more{', ' + fields if fields else ''} FROM checked_{ds.name} c"
            f" JOIN raw_{ds.name} r ON r._f = c._f AND r._line = c._line WHERE len(c._rules) > 0 ORDER BY c._f, c._line"
        )
        order = {rel: fi for fi, (rel, _) in enumerate(headers)}
        pending = sorted(structural, key=lambda row: (order[row[0]], int(row[1])))

        def gen() -> Iterator[list[str]]:
            i = 0
            while batch := cur.fetchmany(10_000):
                for fi, line, rules, more, *values in batch:
                    while i < len(pending) and (order[pending[i][0]], int(pending[i][1])) < (fi, line):
                        yield pending[i]
                        i += 1
                    rel, names = headers[fi]
                    texts = [v if v is not None else "" for v in values[: len(names)]] + list(more or [])
                    yield rejected_row(rel, line, rules, names, texts, ds)
            yield from pending[i:]

        return gen()

    # ----------------------------------------------------------------------------------------- KPIs

    @staticmethod
    def table_sql(plan: Plan, table: TablePlan, source: str, relation: str) -> str:
        """One source dataset's aggregates of a table, grouped by the table's key (null keys left out)."""
        keys = ", ".join(q(k) for k in table.key)
        aggs = []
        for m in table.aggregates(source):
            for j, part in enumerate(m.term.sql(q(m.field or ""))):
                cond = " AND ".join(f.term.sql(q(f.field), f.operand, f.field_type, f.ignore_case) for f in m.where)
                aggs.append(f"{part}{f' FILTER (WHERE {cond})' if cond else ''} AS {q(f'{m.name}#{j}')}")
        not_null = " AND ".join(f"{q(k)} IS NOT NULL" for k in table.key)
        return f"SELECT {keys}, {', '.join(aggs)} FROM {relation} WHERE {not_null} GROUP BY {keys}"

    def aggregate(self, plan: Plan, table: TablePlan, sources: dict[str, list[Path]], partition: str | None) -> GroupValues:
        """Per group key, per aggregate metric, its value (the SQL parts finished as the vocabulary says)."""
        out: GroupValues = {}
        for source in table.sources:
            paths = sources.get(source) or []
            if not paths:
                continue
            relation = parquet_relation(paths, partition)
            cur = self.con.execute(self.table_sql(plan, table, source, relation))
            names = [d[0] for d in cur.description]
            n_keys = len(table.key)
            steps = {m.name: m for m in table.aggregates(source)}
            for row in cur.fetchall():
                parts: dict[str, list[Any]] = {}
                for name, value in zip(names[n_keys:], row[n_keys:], strict=True):
                    parts.setdefault(name.rpartition("#")[0], []).append(value)
                values = out.setdefault(tuple(_key_text(v) for v in row[:n_keys]), {})
                for metric, got in parts.items():
                    values[metric] = steps[metric].term.finish(got)
        return out

    def null_keys(self, table: TablePlan, source: str, paths: list[Path], partition: str | None) -> int:
        if not paths:
            return 0
        cond = " OR ".join(f"{q(k)} IS NULL" for k in table.key)
        return int(self.con.execute(f"SELECT count(*) FROM {parquet_relation(paths, partition)} WHERE {cond}").fetchone()[0])  # type: ignore[index]


def stored_rows_sql(plan: Plan, ds: DatasetPlan, relation: str, present: list[str]) -> str:
    """Rows of the processed store under the config in force: read by column name (a column they lack
    is null), derived fields computed again from their columns (a looked-up field keeps its value)."""
    fields = [c.name for c in ds.columns] + [d.name for d in ds.derived]
    base = [f"{q(c.name)}" if c.name in present else f"NULL::{c.sql_type} AS {q(c.name)}" for c in ds.columns]
    base += [q(d.name) if d.name in present else f"NULL::{field_sql_type(d.type, d.scale)} AS {q(d.name)}" for d in ds.derived if d.via]
    rest = [q(c) for c in present if c not in fields]  # _seq, the partition column, columns dropped from the config
    derived = DuckDBExecutor._derived_sql(plan, ds, lookups=False)["select"]
    columns = ", ".join(f"t.{q(c.name)}" for c in ds.columns)
    others = "".join(f", t.{c}" for c in rest)
    return f"SELECT {columns}{derived}{others} FROM (SELECT {', '.join(base + rest)} FROM {relation}) t"


def plan_sql(plan: Plan) -> dict[str, str]:
    """The statements the executor runs for a plan (`kpipe check-config --explain`)."""
    out = {f"validate {ds.name}": DuckDBExecutor.dataset_sql(plan, ds, f"raw_{ds.name}") for ds in plan.datasets}
    for table in plan.tables:
        for source in table.sources:
            out[f"{table.name} from {source}"] = DuckDBExecutor.table_sql(plan, table, source, f"processed_{source}")
    return out


def parquet_relation(paths: list[Path], partition: str | None) -> str:
    files = "[" + ", ".join(sql_text(str(p)) for p in paths) + "]"
    if partition:
        return f"read_parquet({files}, hive_partitioning = true, hive_types = {{{sql_text(partition)}: DATE}}, union_by_name = true)"
    return f"read_parquet({files}, union_by_name = true)"


def _key_text(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
