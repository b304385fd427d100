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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from chalicelib.config import Engine
from kpipe.engine.csvfiles import blank_line_inside, header, records, rejected_row, survey, write_rejected
from kpipe.engine.plan import ColumnStep, DatasetPlan, DerivedStep, Plan, TablePlan
from kpipe.engine.results import DatasetResult, GroupValues, file_problems
from kpipe.engine.vocabulary import FIELD_SQL_TYPES, NUMERIC, TYPES, WHITESPACE, sql_literal, sql_text

_WS = sql_text(WHITESPACE)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _strip(x: str) -> str:
    """`vocabulary.strip` in SQL: a text starting and ending with a printable character (nearly
    every value) is left as it is, without trim()'s slower character-set scan."""
    return f"CASE WHEN ascii({x}) > 32 AND ascii({x}[-1:]) > 32 THEN {x} ELSE NULLIF(trim({x}, {_WS}), '') END"


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def field_sql_type(kind: str, scale: int) -> str:
    return TYPES[kind].sql_type(scale) if kind in TYPES else FIELD_SQL_TYPES[kind]


@dataclass
class _File:
    number: int
    rel: str
    path: Path
    names: list[str]
    tag: str
    table: str = ""  # the table holding its parsed rows (with other files of its header, unless reread)
    reread: bool = False  # read by the reference reader (`reread_<tag>` holds its every field)


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
        self.tz = ZoneInfo(timezone)
        self._files = 0
        self._parsed: list[str] = []  # the tables of parsed rows of the dataset being validated

    def close(self) -> None:
        self.con.close()

    # ------------------------------------------------------------------------------------ validation

    def validate(self, plan: Plan, batch_dir: Path, files: dict[str, list[str]], out_dir: Path) -> dict[str, DatasetResult]:
        out_dir.mkdir(parents=True, exist_ok=True)
        results: dict[str, DatasetResult] = {}
        for ds in plan.datasets:
            results[ds.name] = self._validate_dataset(plan, ds, batch_dir, files.get(ds.name, []), out_dir)
        return results

    def _read_files(self, ds: DatasetPlan, batch_dir: Path, rels: list[str]) -> tuple[str, list[_File], list[list[Any]]]:
        """A view of every record of the dataset's files, parsed (`typed_sql`): `_f` (file number),
        `_line`, `_whole` (file-level reasons), each declared column's value and state. Files with the
        same header are read and parsed by one statement, their declared columns only (the raw texts
        are never materialised); a file the strict reader refused records of is read again by the
        reference reader. Returns the view's name, the files, and the records rejected before their
        fields were read."""
        files = []
        for fi, rel in enumerate(rels):
            self._files += 1
            files.append(_File(fi, rel, batch_dir / rel, header(batch_dir / rel), f"{ds.name}_{self._files}"))
        groups: dict[tuple[str, ...], list[_File]] = {}
        for file in files:
            if file.names:
                groups.setdefault(tuple(file.names), []).append(file)
        selects: list[str] = []
        structural: list[list[Any]] = []
        todo = list(groups.values())
        while todo:
            group = todo.pop(0)
            try:
                counted = self._read_group(ds, group)
            except duckdb.InvalidInputException:  # a record its state machine cannot read at all (a bare CR)
                if len(group) > 1:  # each file alone, to know which
                    todo[:0] = [[file] for file in group]
                    continue
                counted = {group[0].number: (0, 0, {0})}
            fast, table = [], group[0].table
            for file in group:
                first, rows, refused = counted.get(file.number, (0, 0, set()))
                if self._needs_reread(file, rows, refused):
                    self._reread(file, ds, structural)
                    selects.append(f"SELECT * FROM {file.table}")
                else:
                    fast.append((file, first))
            if fast:  # DuckDB numbers the records in file order: the header is 1
                offsets = " ".join(f"WHEN {f.number} THEN {first - 2}" for f, first in fast)
                keep = ", ".join(str(f.number) for f, _ in fast)
                selects.append(f"SELECT * REPLACE (rowid - CASE _f {offsets} END AS _line) FROM {table} WHERE _f IN ({keep})")
        if not selects:
            cols = ", ".join(f"NULL::VARCHAR AS {q('c_' + c.name)}" for c in ds.columns)
            selects.append(self.typed_sql(ds, f"(SELECT 0 AS _f, 0::BIGINT AS _line, NULL::VARCHAR AS _whole, {cols} WHERE false)"))
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW typed_{ds.name} AS " + " UNION ALL ".join(selects))
        return f"typed_{ds.name}", files, structural

    def _read_group(self, ds: DatasetPlan, group: list[_File]) -> dict[int, tuple[int, int, set[int]]]:
        """Files of one header into one table (`typed_<tag>`, named for the first file); per file number,
        its first rowid, its row count and the record numbers the strict reader refused."""
        tag = group[0].tag
        for file in group:
            file.table = f"typed_{tag}"
        names = group[0].names
        paths = "[" + ", ".join(sql_text(str(f.path)) for f in group) + "]"
        numbers = "[" + ", ".join(str(f.number) for f in group) + "]"
        declared = ", ".join(f"{self._raw(c, names)} AS {q('c_' + c.name)}" for c in ds.columns)
        # the file name is one constant a chunk: its position costs one look-up a chunk, not a row
        raw = f"(SELECT {numbers}[list_position({paths}, t.filename)] AS _f, 0::BIGINT AS _line, {self._whole_sql(ds, names)} AS _whole, {declared} FROM {self._csv(group, tag)} t)"
        self._parsed.append(f"typed_{tag}")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE typed_{tag} AS {self.typed_sql(ds, raw)}")
        counted = {
            int(fi): (int(first), int(rows), set())
            for fi, first, rows in self.con.execute(f"SELECT _f, min(rowid), count(*) FROM typed_{tag} GROUP BY _f").fetchall()
        }
        by_path = {str(f.path): f.number for f in group}
        for path, lines in self.con.execute(
            f"SELECT s.file_path, list(r.line) FROM rj_{tag} r JOIN rs_{tag} s USING (scan_id, file_id) GROUP BY ALL"
        ).fetchall():
            fi = by_path[path]
            counted[fi] = (*counted.get(fi, (0, 0))[:2], set(lines))
        return counted

    @staticmethod
    def _whole_sql(ds: DatasetPlan, names: list[str]) -> str:
        """The file-level reasons of a file with this header, a SQL text (NULL: none)."""
        whole = file_problems(ds, names)
        return sql_text(";".join(whole)) if whole else "NULL::VARCHAR"

    @staticmethod
    def _needs_reread(file: _File, rows: int, refused: set[int]) -> bool:
        """Must the reference reader read this file? When DuckDB refused records, or might number or
        read them otherwise: a one-column file (DuckDB reads a blank line as a row with a null field,
        csv as no row), bytes that are not UTF-8 (DuckDB checks only the columns it reads), a space
        beside a quote, or blank lines between records."""
        if refused or len(file.names) == 1:
            return True
        surveyed = survey(file.path)
        if not surveyed.utf8 or surveyed.padded_quote:
            return True
        return surveyed.newlines > rows + 1 and blank_line_inside(file.path)  # more line breaks than records

    @staticmethod
    def _csv(files: list[_File], rejects: str) -> str:
        """DuckDB's strict reader over files of one header, every field VARCHAR under that header (no
        sniffing), with each record's file name (`filename`)."""
        cols = ", ".join(f"{sql_text(f'f{i}')}: 'VARCHAR'" for i in range(len(files[0].names)))
        paths = "[" + ", ".join(sql_text(str(f.path)) for f in files) + "]"
        return (
            f"read_csv({paths}, header = true, auto_detect = false, columns = {{{cols}}}, delim = ',', filename = true,"
            f" quote = '\"', escape = '\"', strict_mode = true, store_rejects = true, rejects_table = 'rj_{rejects}',"
            f" rejects_scan = 'rs_{rejects}')"
        )

    def _reread(self, file: _File, ds: DatasetPlan, structural: list[list[str]]) -> None:
        """A file DuckDB's strict reader refused records of, or with blank lines inside (so its rows'
        order does not give their record numbers): the records as the reference reader reads them,
        numbered, every field kept (`_more`: fields past the header's). Only such files take this
        slower way; the usual export never does."""
        width = len(file.names)
        columns: dict[str, list[Any]] = {"_line": [], **{f"f{i}": [] for i in range(width)}, "_more": []}
        for line, fields, problem in records(file.path):
            if problem is not None:
                structural.append(rejected_row(file.rel, line, [problem], file.names, fields or [], ds))
                continue
            assert fields is not None
            columns["_line"].append(line)
            for i in range(width):
                columns[f"f{i}"].append(fields[i] if i < len(fields) and fields[i] != "" else None)
            columns["_more"].append(fields[width:] or None)
        import pyarrow as pa  # only on this slower way: the usual run never loads it

        table = pa.table(
            {name: pa.array(values, pa.int64() if name == "_line" else pa.list_(pa.string()) if name == "_more" else pa.string())
             for name, values in columns.items()}
        )
        self.con.register(f"arrow_{file.tag}", table)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE reread_{file.tag} AS SELECT * FROM arrow_{file.tag}")
        self.con.unregister(f"arrow_{file.tag}")
        declared = ", ".join(f"{self._raw(c, file.names)} AS {q('c_' + c.name)}" for c in ds.columns)
        raw = f"(SELECT {file.number} AS _f, t._line, {self._whole_sql(ds, file.names)} AS _whole, {declared} FROM reread_{file.tag} t)"
        file.table, file.reread = f"parsed_{file.tag}", True
        self._parsed.append(file.table)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {file.table} AS {self.typed_sql(ds, raw)}")

    @staticmethod
    def _raw(col: ColumnStep, names: list[str]) -> str:
        return f"t.f{names.index(col.header)}" if col.header in names else "NULL::VARCHAR"

    @staticmethod
    def dataset_sql(plan: Plan, ds: DatasetPlan, typed: str) -> str:
        """The query giving every row of `typed` (`typed_sql`'s rows of every file) `_rules` (its
        reasons, `;`-joined in rule order; '' when valid) and derived fields. Rows of a file with file-level reasons (`_whole`)
        get only those, and claim no key."""
        reasons: list[str] = []
        joins: list[str] = []
        looked: list[str] = []
        for c in ds.columns:
            term, v, st = c.type, f"t.{q(c.name)}", f"t.{q('st_' + c.name)}"
            if c.required:
                reasons.append(f"CASE WHEN {st} = 0 THEN '{c.name}.required' END")
            if term.grammar is not None:
                if term.sql_null_reason == "type":
                    reasons.append(f"CASE WHEN {st} >= 2 THEN '{c.name}.type' END")
                else:
                    reasons.append(f"CASE WHEN {st} = 2 THEN '{c.name}.type' END")
                    reasons.append(f"CASE WHEN {st} = 3 THEN '{c.name}.{term.sql_null_reason}' END")
            for step in c.checks:
                cond = step.term.sql(v, step.operand, c.type.name, step.ignore_case)
                reasons.append(f"CASE WHEN {v} IS NOT NULL AND NOT {cond} THEN '{step.rule}' END")
            if c.unique:  # a later row whose key an earlier row of the batch claimed: one aggregate, no sort
                alias = f"dup_{c.name}"
                joins.append(
                    f"LEFT JOIN (SELECT {q(c.name)} AS k, min(_f * {1 << 40} + _line) AS first FROM {typed}"
                    f" WHERE {q(c.name)} IS NOT NULL AND _whole IS NULL GROUP BY 1 HAVING count(*) > 1) {alias} ON {alias}.k = {v}"
                )
                reasons.append(
                    f"CASE WHEN t._whole IS NULL AND {alias}.k IS NOT NULL AND t._f * {1 << 40} + t._line <> {alias}.first THEN '{c.name}.unique' END"
                )
            if c.references:
                target = plan.dataset(c.references)
                alias = f"ref_{c.name}"
                key, kc = f"{alias}.{q(target.key)}", target.column(target.key)
                if (kc.type.name, kc.scale) != (c.type.name, c.scale) and {kc.type.name, c.type.name} <= set(NUMERIC):
                    # numbers of other scales compare exactly at the larger one (the implicit cast may overflow)
                    wide = f"DECIMAL(38, {max(kc.scale if kc.type.name == 'decimal' else 0, c.scale if c.type.name == 'decimal' else 0)})"
                    joins.append(f"LEFT JOIN keys_{target.name} {alias} ON TRY_CAST({key} AS {wide}) = TRY_CAST({v} AS {wide})")
                else:
                    joins.append(f"LEFT JOIN keys_{target.name} {alias} ON {key} = {v}")
                reasons.append(f"CASE WHEN {v} IS NOT NULL AND {alias}.{q(target.key)} IS NULL THEN '{c.name}.references' END")
                looked += [f"{alias}.{q(f)} AS {q(f'look_{c.name}_{f}')}" for f in plan.lookups.get(target.name, [])]
        for r in ds.row_checks:  # after every column's rules, as `DatasetPlan.rules` lists them
            reasons.append(f"CASE WHEN {r.sql([f't.{q(i)}' for i in r.inputs])} THEN {sql_text(r.rule)} END")
        rules = f"concat_ws(';', {', '.join(reasons)})" if reasons else "''"
        checked = (
            f"SELECT t.*, CASE WHEN t._whole IS NOT NULL THEN t._whole ELSE {rules} END AS _rules{''.join(', ' + x for x in looked)}"
            f" FROM {typed} t {' '.join(joins)}"
        )
        names = ", ".join(f"t.{q(c.name)}" for c in ds.columns)
        derived = DuckDBExecutor._derived_sql(plan, ds)
        return f"SELECT t._f, t._line, t._rules, {names}{derived} FROM ({checked}) t"

    @staticmethod
    def typed_sql(ds: DatasetPlan, raw: str) -> str:
        """Each declared column parsed (`<col>`, the default for a null) with its state (`st_<col>`:
        0 null after stripping, 1 a value, 2 the text breaks the type's grammar, 3 it matches but
        gives no value: the type's `sql_null_reason`). Narrow on purpose: the raw texts are not kept.
        The grammar is tried on the text as it is first: no grammar allows whitespace at the edges,
        so only a text that fails it (few) is stripped and tried again."""
        matched, stripped, parsed, cols = [], [], [], []
        for c in ds.columns:
            term, raw_x = c.type, q("c_" + c.name)
            x, m, g, p, st, value = (q(f"{k}_{c.name}") for k in ("s", "m", "g", "p", "st", ""))
            value = q(c.name)
            default = f"{sql_literal(c.default)}::{c.sql_type}" if c.default is not None else f"NULL::{c.sql_type}"
            if term.grammar is None:
                matched.append(f"{_strip(raw_x)} AS {x}")
                stripped.append(x)
                parsed.append(x)
                cols.append(f"coalesce({x}, {default}) AS {value}, CASE WHEN {x} IS NULL THEN 0 ELSE 1 END::TINYINT AS {st}")
                continue
            grammar = sql_text(term.grammar)
            matched.append(f"{raw_x}, regexp_full_match({raw_x}, {grammar}) AS {m}")
            stripped.append(
                f"CASE WHEN {m} THEN {raw_x} ELSE {_strip(raw_x)} END AS {x},"
                f" CASE WHEN {m} THEN true ELSE regexp_full_match({_strip(raw_x)}, {grammar}) END AS {g}"
            )
            parsed.append(f"{x}, {g}, CASE WHEN {g} THEN {term.sql_parse(x, c.scale)} END AS {p}")
            cols.append(
                f"CASE WHEN {x} IS NULL THEN {default} ELSE {p} END AS {value},"
                f" CASE WHEN {x} IS NULL THEN 0 WHEN NOT {g} THEN 2 WHEN {p} IS NULL THEN 3 ELSE 1 END::TINYINT AS {st}"
            )
        head = "SELECT _f, _line, _whole, "
        inner = f"{head}{', '.join(matched)} FROM {raw}"
        for layer in (stripped, parsed, cols):
            inner = f"{head}{', '.join(layer)} FROM ({inner})"
        return inner

    @staticmethod
    def _derived_sql(plan: Plan, ds: DatasetPlan, lookups: bool = True) -> str:
        """`, <expr> AS <field>` for each derived field in declaration order, each over the fields
        before it (inlined). A looked-up field is the referenced row's value the reference join
        brought (`look_<via>_<field>`); without `lookups`, the value `t` already holds (stored rows keep theirs)."""
        exprs: dict[str, str] = {c.name: f"t.{q(c.name)}" for c in ds.columns}
        selects = []
        for d in ds.derived:
            if d.via is not None:
                exprs[d.name] = f"t.{q(f'look_{d.via}_{d.target_field}' if lookups else d.name)}"
                selects.append(f"{exprs[d.name]} AS {q(d.name)}")
                continue
            expr = d.term.sql(d.spec, [exprs[i] for i in d.inputs])
            if d.type in NUMERIC:  # a product past its type's range is NULL here, its own reason later
                expr = f"TRY(CAST({expr} AS {field_sql_type(d.type, d.scale)}))"
            exprs[d.name] = f"({expr})"
            selects.append(f"{exprs[d.name]} AS {q(d.name)}")
        return "".join(f", {x}" for x in selects)

    def _validate_dataset(self, plan: Plan, ds: DatasetPlan, batch_dir: Path, rels: list[str], out_dir: Path) -> DatasetResult:
        typed, files, structural = self._read_files(ds, batch_dir, rels)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE checked_{ds.name} AS {self.dataset_sql(plan, ds, typed)}")
        # what is done with goes at once: DuckDB holds temp tables in memory up to memory_limit, then spills
        self.con.execute(f"DROP VIEW {typed}")
        while self._parsed:
            self.con.execute(f"DROP TABLE IF EXISTS {self._parsed.pop()}")
        range_rules = [d for d in ds.derived if d.type in NUMERIC and d.via is None]
        if range_rules:  # a derived number that does not fit its type is its own reason (each such field one)
            broken = [f"({q(d.name)} IS NULL AND {self._inputs_present(d)})" for d in range_rules]
            listed = ", ".join(f"CASE WHEN {b} THEN '{d.name}.range' END" for b, d in zip(broken, range_rules, strict=True))
            self.con.execute(f"UPDATE checked_{ds.name} SET _rules = concat_ws(';', {listed}) WHERE _rules = '' AND ({' OR '.join(broken)})")
        fields = ", ".join(q(f) for f in ds.fields)
        valid = f"SELECT {fields} FROM checked_{ds.name} WHERE _rules = '' ORDER BY _f, _line"
        path = out_dir / f"{ds.name}.parquet"
        if ds.name in plan.lookups or any(c.references == ds.name for other in plan.datasets for c in other.columns):
            # what later datasets join to: the first valid row of each key
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE valid_{ds.name} AS {valid}")
            keep = ", ".join(q(f) for f in dict.fromkeys([ds.key, *plan.lookups.get(ds.name, [])]))
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE keys_{ds.name} AS SELECT {keep} FROM valid_{ds.name}"
                f" QUALIFY row_number() OVER (PARTITION BY {q(ds.key)} ORDER BY rowid) = 1"
            )
            valid = f"SELECT * FROM valid_{ds.name}"
        self.con.execute(f"COPY ({valid}) TO {sql_text(str(path))} (FORMAT parquet)")
        self.con.execute(f"DROP TABLE IF EXISTS valid_{ds.name}")  # later datasets need its keys_ only
        counts = dict(
            self.con.execute(
                f"SELECT r, count(*) FROM (SELECT unnest(string_split(_rules, ';')) AS r FROM checked_{ds.name} WHERE _rules <> '') GROUP BY r"
            ).fetchall()
        )
        per_file = {f.rel: {"rows_in": 0, "rows_valid": 0, "rows_rejected": 0} for f in files}
        for fi, valid_rows, bad in self.con.execute(
            f"SELECT _f, count(*) FILTER (WHERE _rules = ''), count(*) FILTER (WHERE _rules <> '') FROM checked_{ds.name} GROUP BY _f"
        ).fetchall():
            per_file[files[fi].rel].update(rows_valid=int(valid_rows), rows_rejected=int(bad))
        n_valid = sum(f["rows_valid"] for f in per_file.values())
        n_rejected = sum(f["rows_rejected"] for f in per_file.values())
        for row in structural:
            per_file[row[0]]["rows_rejected"] += 1
        for stats in per_file.values():
            stats["rows_in"] = stats["rows_valid"] + stats["rows_rejected"]
        rejected = self._rejected(ds, files, structural)
        for row in structural:
            for reason in row[2].split(";"):
                counts[reason] = counts.get(reason, 0) + 1
        write_rejected(out_dir / "rejected" / f"{ds.name}.csv", ds, rejected)
        self.con.execute(f"DROP TABLE checked_{ds.name}")
        for file in files:
            self.con.execute(f"DROP TABLE IF EXISTS reread_{file.tag}; DROP TABLE IF EXISTS full_{file.tag}")
        return DatasetResult(
            rows_valid=n_valid,
            rows_rejected=n_rejected + len(structural),
            reasons={r: counts[r] for r in ds.rules() if r in counts},
            valid_path=path,
            files=per_file,
        )

    @staticmethod
    def _inputs_present(d: DerivedStep) -> str:
        return " AND ".join(f"{q(i)} IS NOT NULL" for i in d.inputs) or "TRUE"

    def _rejected(self, ds: DatasetPlan, files: list[_File], structural: list[list[str]]) -> Iterator[list[str]]:
        """Rejected rows in file and line order, each with every field of its record: the rule-rejected
        ones' records read again (only files that have any), merged with those rejected before their
        fields were read."""
        by_file: dict[int, list[tuple[int, str]]] = {}
        for fi, line, rules in self.con.execute(
            f"SELECT _f, _line, _rules FROM checked_{ds.name} WHERE _rules <> '' ORDER BY _f, _line"
        ).fetchall():
            by_file.setdefault(fi, []).append((line, rules))
        early: dict[str, list[list[str]]] = {}
        for row in structural:
            early.setdefault(row[0], []).append(row)

        def gen() -> Iterator[list[str]]:
            for file in files:
                rows = [(int(r[1]), r) for r in early.get(file.rel, [])]
                wanted = by_file.get(file.number, [])
                if wanted:
                    fields = ", ".join(f"t.f{i}" for i in range(len(file.names)))
                    if file.reread:
                        source, line, more = f"reread_{file.tag} t", "t._line", "t._more"
                    else:  # the whole record, read again: DuckDB numbers it as before
                        self.con.execute(f"CREATE OR REPLACE TEMP TABLE full_{file.tag} AS SELECT * FROM {self._csv([file], f'again_{file.tag}')}")
                        source, line, more = f"full_{file.tag} t", "(t.rowid + 2)", "NULL::VARCHAR[]"
                    self.con.execute(f"CREATE OR REPLACE TEMP TABLE wanted_{file.tag} AS SELECT unnest(?::BIGINT[]) AS n", [[n for n, _ in wanted]])
                    found = {
                        n: [v if v is not None else "" for v in values] + list(extra or [])
                        for n, extra, *values in self.con.execute(
                            f"SELECT {line}, {more}, {fields} FROM {source} WHERE {line} IN (SELECT n FROM wanted_{file.tag})"
                        ).fetchall()
                    }
                    rows += [(n, rejected_row(file.rel, n, rules.split(";"), file.names, found.get(n, []), ds)) for n, rules in wanted]
                yield from (row for _, row in sorted(rows, key=lambda r: r[0]))

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
            # DuckDB hands a TIMESTAMPTZ to Python only through pytz: a datetime key comes as microseconds
            stamps = [k for k in table.key if plan.field_type(source, k) == "datetime"]
            if stamps:
                relation = f"(SELECT * REPLACE ({', '.join(f'epoch_us({q(k)}) AS {q(k)}' for k in stamps)}) FROM {relation})"
            cur = self.con.execute(self.table_sql(plan, table, source, relation))
            names = [d[0] for d in cur.description]
            n_keys = len(table.key)
            steps = {m.name: m for m in table.aggregates(source)}
            for row in cur.fetchall():
                parts: dict[str, list[Any]] = {}
                for name, value in zip(names[n_keys:], row[n_keys:], strict=True):
                    parts.setdefault(name.rpartition("#")[0], []).append(value)
                key = [(_EPOCH + timedelta(microseconds=v)).astimezone(self.tz) if k in stamps else v for k, v in zip(table.key, row, strict=False)]
                values = out.setdefault(tuple(_key_text(v) for v in key), {})
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
    derived = DuckDBExecutor._derived_sql(plan, ds, lookups=False)
    columns = ", ".join(f"t.{q(c.name)}" for c in ds.columns)
    others = "".join(f", t.{c}" for c in rest)
    return f"SELECT {columns}{derived}{others} FROM (SELECT {', '.join(base + rest)} FROM {relation}) t"


def plan_sql(plan: Plan) -> dict[str, str]:
    """The statements the executor runs for a plan (`kpipe check-config --explain`)."""
    out: dict[str, str] = {}
    for ds in plan.datasets:
        out[f"parse {ds.name} (each file: raw_{ds.name})"] = DuckDBExecutor.typed_sql(ds, f"raw_{ds.name}")
        out[f"validate {ds.name}"] = DuckDBExecutor.dataset_sql(plan, ds, f"typed_{ds.name}")
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
