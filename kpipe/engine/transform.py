"""Transform: a validated batch into the processed store, then the KPIs of every date it touched.

The processed store is Hive-partitioned Parquet, `<dataset>/<partition>=YYYY-MM-DD/data.parquet`
(a dataset without `partition_by`: `<dataset>/data.parquet`), queryable as it is by Athena, Glue or
DuckDB. Each key is held once, in its current version: a touched partition is rewritten whole.
Every row carries `_seq`, the sequence number of the batch that brought it, and a small index per
dataset (`_index/<dataset>.parquet`: key, partition, `_seq`) says where each key lives.

The cross-batch rules of the semantics, as the merge applies them (SQL, the same whichever executor
validated the batch):
- a batch's row replaces the stored row with its key unless that one came from a later batch (a
  re-sent old batch takes its old sequence number, so its rows lose to everything after it and
  nothing changes);
- a dataset whose partition field is looked up through a reference (an item's `order_date` via its
  `order_id`) follows its parent: the stored children of a replaced parent get their looked-up fields
  from the parent's new version, and move with it to its new date (and take the batch's sequence
  number: they are what this batch made them);
- every partition the batch touched is rewritten, and its date's KPI items are computed again from
  all its rows, by the executor the config names.
The merge is idempotent: a retry after a crash at any point rewrites the same partitions.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from chalicelib.config import PipelineConfig
from kpipe import config_changes as changes
from kpipe.engine.duckdb_executor import q, stored_rows_sql
from kpipe.engine.executors import open_executor
from kpipe.engine.plan import DatasetPlan, Plan, compile_plan
from kpipe.engine.results import finish_items
from kpipe.engine.store import TRANSFER_THREADS, ProcessedStore
from kpipe.engine.vocabulary import sql_text

STATE = "_meta/state.json"
DATA = "data.parquet"


@dataclass
class TransformResult:
    batch_id: str
    seq: int
    dates: list[str]
    tables: dict[str, dict[str, list[dict[str, Any]]]]
    rows_written: dict[str, int] = field(default_factory=dict)
    rows_carried: int = 0
    replay_of: int | None = None  # the seq the same rows were processed as before, if they were
    null_keys: dict[str, int] = field(default_factory=dict)  # per table, the batch's rows with a null key field


@dataclass
class IndexResult:
    batch_id: str
    seq: int
    dates: list[str]  # every date the batch touched
    rows_written: dict[str, int]
    rows_carried: int
    replay_of: int | None = None
    files: dict[str, dict[str, list[Path]]] = field(default_factory=dict)  # dataset -> date -> local files, as now
    first_batch: str = ""  # the batch id that first brought these rows: another one means a replay, this one a retry


def partition_dir(ds: DatasetPlan, date: str) -> str:
    return f"{ds.name}/{ds.partition_by}={date}"


def partitioned_rows(cfg: PipelineConfig, validated_dir: Path) -> int:
    """Valid rows of the partitioned datasets (from the Parquet footers): how big the transform is."""
    import pyarrow.parquet as pq  # here: the DuckDB path needs pyarrow nowhere else (~70 ms of start-up)

    total = 0
    for name, ds in cfg.datasets.items():
        path = Path(validated_dir) / f"{name}.parquet"
        if ds.partition_by and path.exists():
            total += pq.ParquetFile(path).metadata.num_rows
    return total


def date_groups(dates: list[str], groups: int) -> list[list[str]]:
    """Sorted dates cut into `groups` runs of consecutive dates: any split gives the same KPIs (each
    task computes whole periods from the store), and consecutive ones keep a week or a month in
    one task (mostly), so few periods are computed twice."""
    ordered, groups = sorted(dates), max(1, groups)
    return [ordered[len(ordered) * i // groups : len(ordered) * (i + 1) // groups] for i in range(groups)]


class _Files:
    """The store's files a merge reads, fetched once into a local mirror."""

    def __init__(self, store: ProcessedStore, root: Path) -> None:
        self.store, self.root = store, root
        self.listed: dict[str, dict[str, list[str]]] = {}

    def partitions(self, ds: DatasetPlan) -> dict[str, list[str]]:
        """date -> the store's file names in that partition (one LIST of the dataset's prefix)."""
        if ds.name not in self.listed:
            found: dict[str, list[str]] = defaultdict(list)
            head = f"{ds.name}/{ds.partition_by}="
            for name in self.store.list(head):
                date, _, rest = name[len(head) :].partition("/")
                if rest.endswith(".parquet") and "/" not in rest:
                    found[date].append(name)
            self.listed[ds.name] = dict(found)
        return self.listed[ds.name]

    def fetch(self, names: list[str]) -> list[Path]:
        def one(name: str) -> Path | None:
            dest = self.root / name
            return dest if dest.exists() or self.store.fetch(name, dest) else None

        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            return [p for p in pool.map(one, names) if p is not None]

    def read_json(self, name: str) -> Any:
        path = self.root / name
        return json.loads(path.read_text(encoding="utf-8")) if self.store.fetch(name, path) else None


def _connect(cfg: PipelineConfig, work_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit = {sql_text(cfg.engine.memory_limit)}")
    if cfg.engine.threads:
        con.execute(f"SET threads = {int(cfg.engine.threads)}")
    con.execute(f"SET temp_directory = {sql_text(str(cfg.engine.temp_directory or work_dir / 'spill'))}")
    con.execute(f"SET TimeZone = {sql_text(cfg.timezone)}")
    return con


def _files_sql(con: duckdb.DuckDBPyConnection, plan: Plan, paths: list[Path], ds: DatasetPlan) -> str:
    """Stored rows as the config in force sees them (`stored_rows_sql`), as a subquery."""
    files = "[" + ", ".join(sql_text(str(p)) for p in paths) + "]"
    hive = f", hive_partitioning = true, hive_types = {{{sql_text(ds.partition_by)}: DATE}}" if ds.partition_by else ""
    relation = f"read_parquet({files}, union_by_name = true{hive})"
    present = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]
    return f"({stored_rows_sql(plan, ds, relation, present)})"


def _parent(plan: Plan, ds: DatasetPlan) -> tuple[DatasetPlan, str] | None:
    """(parent dataset, referencing column) when the partition field is looked up through a reference."""
    step = next((d for d in ds.derived if d.name == ds.partition_by and d.via), None)
    if step is None or step.target is None:
        return None
    parent = plan.dataset(step.target)
    return (parent, step.via) if parent.partition_by else None  # type: ignore[return-value]


def index_batch(cfg: PipelineConfig, batch_id: str, validated_dir: Path, store: ProcessedStore, work_dir: Path) -> IndexResult:
    """Merge the batch's valid rows into the store (see the module docstring). Must run under the
    pipeline's lease: the index and the state are one structure per store."""
    plan = compile_plan(cfg)
    validated_dir, work_dir = Path(validated_dir), Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    mirror, staging = work_dir / "store", work_dir / "staging"
    staging.mkdir(parents=True)
    files = _Files(store, mirror)
    state = files.read_json(STATE) or {"next_seq": 1, "batches": {}, "contents": {}}
    meta = json.loads((validated_dir / "batch.json").read_text()) if (validated_dir / "batch.json").exists() else {}
    digest = meta.get("digest") or batch_id
    known = state["contents"].get(digest)
    origins = state.setdefault("origins", {})  # content digest -> the batch id that first brought those rows
    first = origins.get(digest) if known else None
    seq = known or state["batches"].get(batch_id) or state["next_seq"]
    con = _connect(cfg, work_dir)
    written: dict[str, int] = {}
    touched_all: set[str] = set()
    carried_total = 0
    new_files: dict[str, dict[str, list[Path]]] = {}
    publish: list[tuple[str, Path]] = []
    deletes: list[str] = []
    try:
        for ds in plan.datasets:
            src = validated_dir / f"{ds.name}.parquet"
            if not src.exists():
                continue
            key = q(ds.key)
            # a key repeated within the batch (a key column not declared unique): its last row wins
            last = "" if ds.column(ds.key).unique else f" QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY file_row_number DESC) = 1"
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE b_{ds.name} AS SELECT * EXCLUDE (file_row_number), {seq}::BIGINT AS _seq"
                f" FROM read_parquet({sql_text(str(src))}, file_row_number = true){last}"
            )
            if not ds.partition_by:
                written[ds.name] = _merge_whole(con, plan, ds, f"b_{ds.name}", files, staging, publish)
                continue
            part = q(ds.partition_by)
            index_name = f"_index/{ds.name}.parquet"
            index_files = files.fetch([index_name])
            if index_files:
                con.execute(f"CREATE OR REPLACE TEMP TABLE idx AS SELECT * FROM read_parquet({sql_text(str(index_files[0]))})")
            else:
                con.execute(f"CREATE OR REPLACE TEMP TABLE idx AS SELECT {key} AS k, {part} AS p, _seq FROM b_{ds.name} WHERE false")
            if index_files:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE win_{ds.name} AS SELECT b_{ds.name}.* FROM b_{ds.name} LEFT JOIN idx ON idx.k = b_{ds.name}.{key}"
                    f" WHERE idx.k IS NULL OR idx._seq <= {seq}"
                )
            else:  # nothing stored yet: every row wins
                con.execute(f"ALTER TABLE b_{ds.name} RENAME TO win_{ds.name}")
                con.execute(f"CREATE OR REPLACE TEMP VIEW b_{ds.name} AS SELECT * FROM win_{ds.name}")
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE old_{ds.name} AS SELECT idx.k, idx.p FROM idx JOIN win_{ds.name} w ON w.{key} = idx.k"
            )
            parent = _parent(plan, ds)
            dates = {str(d) for (d,) in con.execute(
                f"SELECT DISTINCT {part} FROM win_{ds.name} UNION SELECT DISTINCT p FROM old_{ds.name}"
            ).fetchall() if d is not None}
            if parent is not None:  # the dates the parents left hold children that may move
                dates |= {str(d) for (d,) in con.execute(f"SELECT DISTINCT p FROM old_{parent[0].name}").fetchall()}
            listed = files.partitions(ds)
            local = files.fetch([n for d in sorted(dates) for n in listed.get(d, [])])
            stored = _files_sql(con, plan, local, ds) if local else None
            carried = f"SELECT * FROM b_{ds.name} WHERE false"
            if parent is not None and stored is not None:
                pds, via = parent
                looked = [d for d in ds.derived if d.via == via]
                # a carried row was changed by this batch: it is as new as the batch (a re-sent older
                # batch's copy of it must not win it back)
                replace = ", ".join([f"w.{q(d.target_field or '')} AS {q(d.name)}" for d in looked] + [f"greatest(s._seq, {seq}) AS _seq"])
                carried = (
                    f"SELECT s.* REPLACE ({replace}) FROM {stored} s JOIN win_{pds.name} w ON w.{q(pds.key)} = s.{q(via)}"
                    f" WHERE s.{key} NOT IN (SELECT {key} FROM win_{ds.name})"
                )
            con.execute(f"CREATE OR REPLACE TEMP TABLE carried AS {carried}")
            arrivals = {str(d) for (d,) in con.execute(f"SELECT DISTINCT {part} FROM carried").fetchall() if d is not None} - dates
            if arrivals:  # the dates carried rows move to: their rows are rewritten too
                local += files.fetch([n for d in sorted(arrivals) for n in listed.get(d, [])])
                stored = _files_sql(con, plan, local, ds) if local else None
                dates |= arrivals
            if not dates:
                continue
            gone = f"SELECT {key} FROM win_{ds.name} UNION ALL SELECT {key} FROM carried"
            if stored is None:  # only new dates: the partitions hold exactly the batch's rows
                con.execute(f"CREATE OR REPLACE TEMP VIEW new_{ds.name} AS SELECT * FROM win_{ds.name}")
            else:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE new_{ds.name} AS SELECT * FROM {stored} WHERE {key} NOT IN ({gone})"
                    f" UNION ALL BY NAME SELECT * FROM win_{ds.name} UNION ALL BY NAME SELECT * FROM carried"
                )
            out = staging / ds.name
            con.execute(
                f"COPY new_{ds.name} TO {sql_text(str(out))}"
                f" (FORMAT parquet, PARTITION_BY ({part}), OVERWRITE_OR_IGNORE, FILENAME_PATTERN 'data')"
            )
            now: dict[str, list[Path]] = {}
            for date in sorted(dates):
                folder = out / f"{ds.partition_by}={date}"
                staged = sorted(folder.glob("*.parquet")) if folder.exists() else []
                names = [f"{partition_dir(ds, date)}/{DATA if i == 0 else f'data-{i}.parquet'}" for i in range(len(staged))]
                publish += list(zip(names, staged, strict=True))
                deletes += [n for n in listed.get(date, []) if n not in names]
                now[date] = staged
            new_files[ds.name] = now
            touched_all |= dates
            written[ds.name] = int(con.execute(f"SELECT count(*) FROM win_{ds.name}").fetchone()[0])  # type: ignore[index]
            carried_total += int(con.execute("SELECT count(*) FROM carried").fetchone()[0])  # type: ignore[index]
            # the index: every key of an untouched partition as it was, every key of a touched one as it is now
            touched_list = "[" + ", ".join(f"DATE {sql_text(d)}" for d in sorted(dates)) + "]"
            index_out = work_dir / "index" / f"{ds.name}.parquet"
            index_out.parent.mkdir(parents=True, exist_ok=True)
            con.execute(
                f"COPY (SELECT k, p, _seq FROM idx WHERE NOT list_contains({touched_list}, p)"
                f" UNION ALL SELECT {key} AS k, {part} AS p, _seq FROM new_{ds.name} ORDER BY k) TO {sql_text(str(index_out))} (FORMAT parquet)"
            )
            publish.append((index_name, index_out))
    finally:
        con.close()
    # partitions first, the index after them, the state last: a crash in between is retried to the same end
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        parts = [p for p in publish if not p[0].startswith("_index/")]
        now_at = dict(zip((str(src) for _, src in parts), pool.map(lambda item: store.publish(*item, move=True), parts), strict=True))
        list(pool.map(store.delete, deletes))
    new_files = {ds: {d: [now_at.get(str(p), p) for p in paths] for d, paths in by_date.items()} for ds, by_date in new_files.items()}
    for name, path in publish:
        if name.startswith("_index/"):
            store.publish(name, path, move=True)
    state["batches"][batch_id] = seq
    state["contents"][digest] = seq
    origins.setdefault(digest, first or batch_id)
    state["next_seq"] = max(state["next_seq"], seq + 1)
    config_path = work_dir / "config.json"  # the config the store's rows were last merged under
    config_path.write_text(changes.dump(cfg), encoding="utf-8")
    store.publish(changes.CONFIG, config_path)
    state_path = work_dir / "state.json"
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    store.publish(STATE, state_path)
    return IndexResult(batch_id, seq, sorted(touched_all), written, carried_total, known, new_files, first or batch_id)


def _merge_whole(
    con: duckdb.DuckDBPyConnection, plan: Plan, ds: DatasetPlan, batch: str, files: _Files, staging: Path, publish: list[tuple[str, Path]]
) -> int:
    """A dataset without partitions (the catalog): one file, each key in its newest version."""
    name = f"{ds.name}/{DATA}"
    stored = files.fetch([name])
    key = q(ds.key)
    if stored:
        current = _files_sql(con, plan, stored, ds)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE win AS SELECT b.* FROM {batch} b LEFT JOIN {current} s ON s.{key} = b.{key}"
            f" WHERE s.{key} IS NULL OR s._seq <= b._seq"
        )
        body = f"SELECT * FROM {current} WHERE {key} NOT IN (SELECT {key} FROM win) UNION ALL BY NAME SELECT * FROM win"
    else:
        con.execute(f"CREATE OR REPLACE TEMP TABLE win AS SELECT * FROM {batch}")
        body = "SELECT * FROM win"
    out = staging / ds.name / DATA
    out.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"COPY ({body} ORDER BY {key}) TO {sql_text(str(out))} (FORMAT parquet)")
    publish.append((name, out))
    return int(con.execute("SELECT count(*) FROM win").fetchone()[0])  # type: ignore[index]


def period_value(date: str, grain: str) -> str:
    """The period a partition date falls in, as `date_of` of that grain gives it: the date itself,
    its ISO week's Monday, or `YYYY-MM`."""
    if grain == "week":
        day = dt.date.fromisoformat(date)
        return (day - dt.timedelta(days=day.weekday())).isoformat()
    return date[:7] if grain == "month" else date


FileSource = Callable[[str, list[str]], dict[str, list[Path]]]  # (dataset, dates) -> date -> local files


def kpi_tables(
    cfg: PipelineConfig,
    dates: list[str],
    available: dict[str, list[str]],
    files: FileSource,
    work_dir: Path,
    executor: str | None = None,
    whole: bool = True,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every KPI table's complete items of each period `dates` fall in, from every partition of those
    periods (`available`: each dataset's dates in the store). Per table: period value -> its items (an
    empty list: the period has no item any more); a table spanning every date (no period key,
    `PipelineConfig.period_of`) is computed from all partitions as `{"*": items}`, only when `whole`."""
    plan = compile_plan(cfg)
    partition = plan.partition_field()
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with open_executor(cfg, Path(work_dir) / "kpis", executor) as ex:
        for table in plan.tables:
            period = cfg.period_of(table.name)
            if period is None and not whole:
                continue
            periods = sorted({period_value(d, period[1]) for d in dates}) if period else ["*"]
            sources: dict[str, list[Path]] = {}
            for source in table.sources:
                have = available.get(source, [])
                needed = [d for d in have if period_value(d, period[1]) in periods] if period else have
                local = files(source, needed)
                sources[source] = [p for d in needed for p in local.get(d, [])]
            items = finish_items(table, ex.aggregate(plan, table, sources, partition))
            by_period: dict[str, list[dict[str, Any]]] = {p: [] for p in periods}
            for item in items:
                by_period.setdefault(str(item.get(period[0])) if period else "*", []).append(item)
            out[table.name] = by_period
    return out


def null_key_rows(cfg: PipelineConfig, validated_dir: Path, executor: str | None = None) -> dict[str, int]:
    """Per KPI table, the batch's valid rows that fall in no item because a key field is null (an
    item whose product has no brand, for a table keyed by brand)."""
    plan = compile_plan(cfg)
    counts: dict[str, int] = {}
    with open_executor(cfg, Path(validated_dir).parent / "null-keys", executor) as ex:
        for table in plan.tables:
            paths = {s: Path(validated_dir) / f"{s}.parquet" for s in table.sources}
            counts[table.name] = sum(ex.null_keys(table, s, [p], None) for s, p in paths.items() if p.exists())
    return counts


def _store_files(store: ProcessedStore, work_dir: Path, plan: Plan, local: dict[str, dict[str, list[Path]]] | None = None) -> tuple[dict[str, list[str]], FileSource]:
    """Each partitioned dataset's dates in the store (one LIST each), and a source of their files:
    those in `local` (what a merge just wrote) as they are, the rest fetched once into a mirror."""
    mirror = _Files(store, work_dir)
    local = local or {}
    available = {}
    for ds in plan.datasets:
        if ds.partition_by:
            available[ds.name] = sorted(set(mirror.partitions(ds)) | set(local.get(ds.name, {})))

    def files(name: str, dates: list[str]) -> dict[str, list[Path]]:
        here = local.get(name, {})
        listed = mirror.partitions(plan.dataset(name))
        return {d: here[d] if d in here else mirror.fetch(listed.get(d, [])) for d in dates}

    return available, files


def recompute(
    cfg: PipelineConfig, dates: list[str], store: ProcessedStore, work_dir: Path, executor: str | None = None, whole: bool = True
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The KPI items of the periods of `dates` from the store as it is (the fan-out's recompute tasks;
    `whole`: also the tables spanning every date, which one task of a fan-out computes)."""
    available, files = _store_files(store, Path(work_dir) / "store", compile_plan(cfg))
    return kpi_tables(cfg, dates, available, files, work_dir, executor, whole)


def batch_kpis(cfg: PipelineConfig, indexed: IndexResult, store: ProcessedStore, work_dir: Path, executor: str | None = None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The KPIs of every period a merge touched, from the partitions as it left them (those it wrote
    are local already: only the other partitions of those periods are read from the store)."""
    available, files = _store_files(store, Path(work_dir) / "unchanged", compile_plan(cfg), indexed.files)
    return kpi_tables(cfg, indexed.dates, available, files, work_dir, executor)


def transform_batch(
    cfg: PipelineConfig, batch_id: str, validated_dir: Path, store: ProcessedStore, work_dir: Path, executor: str | None = None
) -> TransformResult:
    """Merge the batch into the store, then the KPIs of every date it touched."""
    indexed = index_batch(cfg, batch_id, validated_dir, store, work_dir)
    tables = batch_kpis(cfg, indexed, store, work_dir, executor)
    null_keys = null_key_rows(cfg, validated_dir, executor)
    return TransformResult(batch_id, indexed.seq, indexed.dates, tables, indexed.rows_written, indexed.rows_carried, indexed.replay_of, null_keys)
