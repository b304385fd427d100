"""Transform one validated batch (ECS task 2's logic): processed store in, KPI items of touched dates out.

The processed store keeps every batch's rows, partitioned by the partition field (`order_date`):
`<dataset>/order_date=<D>/<seq>-<batch_id>.csv`, where `seq` orders batches by arrival. An index per
dataset maps each key to the (seq, date) of its newest version, so a row is *live* when the index
points at its own file. That gives the cross-batch semantics without rewriting history:

- a later batch's row replaces an earlier one with the same key (the index moves to it);
- an order moved to another date leaves its old date; its items that were not re-sent follow it:
  they are copied ("carried") into the new date under the new batch and the index moves to them;
- processing a batch again (the same validated rows, under any batch id) reuses its seq and file
  names, rewrites identical files and changes nothing;
- the KPIs of every touched date are recomputed from all live rows of that date, so a day split
  across batches equals the same day sent in one batch.

Writes are ordered so a crash at any point can be retried: partition files first, then the batch's
plan (seq and touched dates), then the indexes and the batch counter.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import shutil
import threading
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import petl

from chalicelib.config import PipelineConfig
from kpipe.engine.csvio import CanonicalCsv, OpenFiles, groups_path, read_bytes, span_segments
from kpipe.engine.index_keeper import IndexKeeper, Put
from kpipe.engine.keys import KeyTable
from kpipe.engine.kpis import DateAggregator, KpiPlan
from kpipe.engine.parsing import read_bool, read_ints, reader_for
from kpipe.engine.store import TRANSFER_THREADS, LocalStore, ProcessedStore

STATE = "_meta/state.json"


@dataclass
class TransformResult:
    batch_id: str
    seq: int
    dates: list[str]
    tables: dict[str, dict[str, list[dict[str, Any]]]]
    rows_written: dict[str, int] = field(default_factory=dict)
    rows_carried: int = 0


@dataclass
class _Partitioned:
    """How one partitioned dataset sits in validated files and in the store."""

    name: str
    header: list[str]
    key_pos: int
    key_reader: Any
    part_pos: int
    parent: str | None = None  # dataset whose partition this one follows (items follow orders)
    parent_pos: int = -1
    parent_reader: Any = None


def partitioned_datasets(cfg: PipelineConfig) -> list[_Partitioned]:
    """Partitioned datasets, parents before children."""
    out: list[_Partitioned] = []
    for name in cfg.dataset_order():
        ds = cfg.datasets[name]
        if ds.partition_by is None:
            continue
        header = ds.fields()
        info = _Partitioned(
            name, header, header.index(ds.key), reader_for(ds.columns[ds.key].type), header.index(ds.partition_by)
        )
        spec = ds.derived.get(ds.partition_by)
        if spec is not None and spec.lookup is not None:
            target = ds.columns[spec.lookup.via].references
            if target is not None and cfg.datasets[target].partition_by == spec.lookup.field:
                info.parent = target
                info.parent_pos = header.index(spec.lookup.via)
                info.parent_reader = reader_for(cfg.datasets[target].columns[cfg.datasets[target].key].type)
        out.append(info)
    return out


def _partition_dir(cfg: PipelineConfig, dataset: str, date: str) -> str:
    return f"{dataset}/{cfg.datasets[dataset].partition_by}={date}/"


PREFETCH_DATES = 16  # dates whose files are fetched ahead at a time (disk use: about as many dates)


class _Cache:
    """Local copies of store files, so the transform reads each at most once (a local store's
    files are read in place)."""

    def __init__(self, store: ProcessedStore, root: Path) -> None:
        self.store, self.root = store, root
        self.listings: dict[str, set[str]] = {}
        self.pending: dict[str, Future[bool]] = {}  # fetches started by `prefetch`
        self.pool: ThreadPoolExecutor | None = None

    def path(self, name: str) -> Path | None:
        if isinstance(self.store, LocalStore):
            in_place = self.store.root / name
            return in_place if in_place.is_file() else None
        local = self.root / name
        started = self.pending.pop(name, None)
        if started is not None:
            return local if started.result() else None
        if local.exists():  # fetched or published earlier in this run
            return local
        return local if self.store.fetch(name, local) else None

    def prefetch(self, names: Sequence[str]) -> None:
        """Start fetching `names` from a remote store in the background; `path` waits for them.

        Why: a recompute reads a file or two per date and dataset, and one GET at a time left the
        task waiting on round trips: a batch spanning five years is ~3,600 of them."""
        if isinstance(self.store, LocalStore):
            return
        if self.pool is None:
            self.pool = ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="fetch")
        for name in names:
            if name not in self.pending and not (self.root / name).exists():
                self.pending[name] = self.pool.submit(self.store.fetch, name, self.root / name)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending.clear()

    def list(self, prefix: str) -> list[str]:
        """Names under a prefix. A remote store is listed once per dataset (`<dataset>/`) and then
        answered from memory: one paginated LIST instead of one per date."""
        if isinstance(self.store, LocalStore):
            return self.store.list(prefix)
        top = prefix.split("/", 1)[0] + "/"
        if top not in self.listings:
            self.listings[top] = set(self.store.list(top))
        return sorted(n for n in self.listings[top] if n.startswith(prefix))

    def publish_moved(self, names: list[str], src_root: Path) -> None:
        """`publish(name, src_root / name, move=True)` of each name (a local store takes whole new
        folders at once: `LocalStore.publish_moved`)."""
        if isinstance(self.store, LocalStore):
            self.store.publish_moved(names, src_root)
            return
        # one PUT at a time left the task waiting on round trips: a batch spanning five years
        # writes ~3,600 date files (each PUT is atomic on its own; the index goes after all of them)
        with ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="publish") as pool:
            for _done in pool.map(lambda name: self.publish(name, src_root / name, move=True), names):
                pass  # an upload's error is raised here

    def publish(self, name: str, src: Path, move: bool = False) -> None:
        """Publish to the store and keep what was published as the local copy. `move`: `src` is
        scratch the caller is done with, taken instead of copied where it can be."""
        if isinstance(self.store, LocalStore):
            self.store.publish(name, src, move=move)
        else:
            self.store.publish(name, src)
            local = self.root / name
            local.parent.mkdir(parents=True, exist_ok=True)
            if move:
                Path(src).replace(local)  # both under the transform's work directory
            else:
                shutil.copyfile(src, local)
        for top, names in self.listings.items():
            if name.startswith(top):
                names.add(name)


def transform_batch(
    cfg: PipelineConfig,
    batch_id: str,
    validated_dir: Path,
    store: ProcessedStore,
    work_dir: Path,
    workers: int = 1,
) -> TransformResult:
    """Index the batch into the store, then the KPIs of every date it touched: those of the dates it
    brings alone come from the indexing pass itself, the others are recomputed from the store."""
    indexed = index_batch(cfg, batch_id, validated_dir, store, work_dir, workers, aggregate=True)
    rest = indexed.recompute_dates
    if workers > 1 and isinstance(store, LocalStore) and len(rest) > 1:
        recomputed = _recompute_in_processes(cfg, rest, store, Path(work_dir), workers)
    else:
        recomputed = recompute(cfg, rest, store, Path(work_dir))
    tables = {
        name: dict(sorted({**indexed.tables.get(name, {}), **recomputed.get(name, {})}.items())) for name in cfg.kpis
    }
    return TransformResult(batch_id, indexed.seq, indexed.dates, tables, indexed.rows_written, indexed.rows_carried)


@dataclass
class IndexResult:
    batch_id: str
    seq: int
    dates: list[str]  # every date the batch touched
    rows_written: dict[str, int]
    rows_carried: int
    # with `aggregate`: each KPI table's items of the dates the batch brought alone (see `index_batch`)
    tables: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    @property
    def recompute_dates(self) -> list[str]:
        """The touched dates whose KPIs still need `recompute`."""
        done = {date for by_date in self.tables.values() for date in by_date}
        return [date for date in self.dates if date not in done]


def index_batch(
    cfg: PipelineConfig,
    batch_id: str,
    validated_dir: Path,
    store: ProcessedStore,
    work_dir: Path,
    workers: int = 1,
    aggregate: bool = False,
    place: tuple[str, int, str] | None = None,
) -> IndexResult:
    """Write the batch's rows into the store's partitions and move the index to them.

    Must run under the pipeline's lease (the indexes are one structure per dataset). Validated files
    grouped by date (the groups sidecar) are indexed a date at a time, dates in `workers` parallel
    processes; others a dataset at a time.

    With `aggregate`, the KPI items of each date the batch brings alone are computed from its rows as
    they are written (`IndexResult.tables`): no other file in the date's partitions, every row live,
    nothing carried in. Those items are what `recompute` would give, without reading the rows again.

    The same rows again (a retry, or the same files uploaded again under a new batch id) take the
    place they had: same seq, same file names, so nothing changes and nothing is counted twice. Their
    content digest is computed beside the dates' indexing (a thread: hashlib releases the GIL) while
    the batch takes the place its id gives it; in the rare case the rows were indexed before under
    another id, nothing has been published yet and the work is done again in their place (`place`:
    digest, seq, stem)."""
    validated_dir, work_dir = Path(validated_dir), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = _Cache(store, work_dir / "store")
    out_root = work_dir / "out"
    state = _read_json(cache, STATE) or {"next_seq": 1, "batches": {}}
    contents = state.setdefault("contents", {})
    datasets = partitioned_datasets(cfg)
    spans = {d.name: _read_spans(validated_dir / f"{d.name}.csv") for d in datasets}
    grouped = all(s is not None for s in spans.values())
    hashing = _Digest(validated_dir, datasets)
    if place is not None:
        digest, seq, stem = place
    else:
        digest = None if grouped else hashing.run()
        known = contents.get(digest) if digest is not None else None
        if known is not None:
            seq, stem = known["seq"], known["stem"]
        else:
            seq = state["batches"].get(batch_id) or state["next_seq"]
            stem = f"{seq:08d}-{batch_id}"
    prior_plan = _read_json(cache, f"_meta/batches/{stem}.json") or {}
    touched: set[str] = set(prior_plan.get("dates", []))
    moved: dict[str, dict[Any, str]] = {d.name: {} for d in datasets}  # dataset -> key -> old date
    written: dict[str, int] = {}
    new_files: list[str] = []
    tables: dict[str, dict[str, list[dict[str, Any]]]] = {}

    if grouped:
        indexes = {d.name: _load_index(cache, d.name) for d in datasets}
        date_spans = {name: {span[0]: span for span in spans[name] or []} for name in spans}
        plan = KpiPlan.compile(cfg) if aggregate and cfg.kpis else None
        job = _DatesJob(cfg, datasets, date_spans, indexes, validated_dir, out_root, stem, seq, plan).prepare(cache)
        started = hashing.start if digest is None else None
        # forked before the date workers and the digest thread: see index_keeper.py
        with IndexKeeper(indexes, separate=workers > 1 and len(job.dates()) > 1) as keeper:
            for result in _index_each_date(job, workers, started):
                keeper.apply(result.puts)
                for d in datasets:
                    moved[d.name].update(result.moved.get(d.name, {}))
                    written[d.name] = written.get(d.name, 0) + result.written.get(d.name, 0)
                touched.update(result.touched)
                new_files.extend(result.files)
                for table, by_date in result.tables.items():
                    tables.setdefault(table, {}).update(by_date)
            keeper.save({d.name: work_dir / f"{d.name}.idx" for d in datasets})
        del indexes, job  # the indexes as they were: the files hold them as they are now
        if digest is None:
            digest = hashing.result()
            known = contents.get(digest)
            if known is not None and (known["seq"], known["stem"]) != (seq, stem):
                again = work_dir / "again"  # these rows had their place already: nothing was published
                shutil.rmtree(again, ignore_errors=True)
                return index_batch(
                    cfg, batch_id, validated_dir, store, again, workers, aggregate, (digest, known["seq"], known["stem"])
                )
    else:  # no sidecar (an older release validated the batch) or a quoted file: a dataset at a time
        # each dataset's index is read from the store's copy and written to work_dir/<dataset>.idx by the
        # process that indexes the dataset: the tables never travel between processes
        jobs = [
            (cfg, d, cache.path(f"_index/{d.name}.idx"), work_dir / f"{d.name}.idx", validated_dir, out_root, stem, seq, spans[d.name])
            for d in datasets
        ]
        if workers > 1 and len(jobs) > 1:  # datasets have indexes of their own: one process each
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork")) as pool:
                results = list(pool.map(_index_dataset, jobs))
        else:
            results = [_index_dataset(job) for job in jobs]
        for d, result in zip(datasets, results, strict=True):
            moved[d.name] = result.moved
            touched.update(result.touched)
            written[d.name] = result.written
            new_files.extend(result.files)

    # each dataset's index is now work_dir/<dataset>.idx; loaded again only to carry children
    carried = 0
    for d in datasets:
        if d.parent is None or not moved[d.parent]:
            continue
        indexes = {name: KeyTable.load(work_dir / f"{name}.idx") for name in (d.name, d.parent)}
        count, dates_in = _carry_children(cfg, d, moved[d.parent], indexes, cache, out_root, seq, stem, new_files)
        indexes[d.name].save(work_dir / f"{d.name}.idx")
        carried += count
        for by_date in tables.values():  # rows carried in: those dates are recomputed
            for date in dates_in:
                by_date.pop(date, None)

    cache.publish_moved(new_files, out_root)
    dates = sorted(touched)
    _publish_json(cache, work_dir, f"_meta/batches/{stem}.json", {"seq": seq, "dates": dates})
    for d in datasets:
        cache.publish(f"_index/{d.name}.idx", work_dir / f"{d.name}.idx")
    state["batches"][batch_id] = seq
    contents[digest] = {"seq": seq, "stem": stem}
    state["next_seq"] = max(state["next_seq"], seq + 1)
    _publish_json(cache, work_dir, STATE, state)
    return IndexResult(batch_id, seq, dates, written, carried, tables)


@dataclass
class _DatesJob:
    """What the processes indexing dates share (handed over by fork, read only)."""

    cfg: PipelineConfig
    datasets: list[_Partitioned]
    spans: dict[str, dict[str, Sequence[Any]]]  # dataset -> date -> [date, offset, bytes, rows]
    indexes: dict[str, KeyTable]  # as before this batch
    validated_dir: Path
    out_root: Path
    stem: str
    seq: int
    plan: KpiPlan | None  # None: no aggregation
    codes: dict[str, dict[str, int]] = field(default_factory=dict)  # dataset -> date -> code of (seq, date)
    alone: set[str] = field(default_factory=set)  # dates with no other file in any partition
    feeds: dict[str, _KpiColumns] = field(default_factory=dict)  # dataset -> how its KPI fields are read

    def prepare(self, cache: _Cache) -> _DatesJob:
        """Fix the index codes of this batch's dates (before forking, so every process uses the same
        ones) and find the dates the batch brings alone (their KPIs may come from this pass)."""
        for d in self.datasets:
            self.codes[d.name] = {date: self.indexes[d.name].code((self.seq, date)) for date in self.spans[d.name]}
        if self.plan is not None:
            self.alone = {date for date in self.dates() if self._alone(cache, date)}
            self.feeds = {d.name: _KpiColumns(self.plan, d) for d in self.datasets if d.name in self.plan.fields}
        return self

    def dates(self) -> list[str]:
        return sorted({date for by_date in self.spans.values() for date in by_date})

    def weight(self, date: str) -> int:
        return sum(by_date[date][2] for by_date in self.spans.values() if date in by_date)

    def _alone(self, cache: _Cache, date: str) -> bool:
        own = f"{self.stem}.csv"  # this batch's own file, from an earlier attempt: rewritten identically
        return all(name.endswith("/" + own) for d in self.datasets for name, _ in _partition_files(cache, self.cfg, d.name, date))


@dataclass
class _DatesIndexed:
    moved: dict[str, dict[Any, str]]  # dataset -> key -> the date it was on before this batch moved it
    touched: set[str]
    written: dict[str, int]
    files: list[str]
    # dataset -> the index updates (`index_keeper.apply_puts`): they travel back with the result (an
    # id is 4 or 8 bytes in an array), not through a file per date and dataset
    puts: dict[str, list[Put]]
    tables: dict[str, dict[str, list[dict[str, Any]]]]


_DATES_JOB: dict[str, _DatesJob] = {}


def _index_each_date(
    job: _DatesJob, workers: int, started: Callable[[], None] | None = None
) -> Iterator[_DatesIndexed]:
    """Each date of the batch indexed on its own, in up to `workers` processes, biggest dates first
    (the last ones to finish are then small); results come back as tasks finish (in any order), so
    the parent applies one date's index updates while the others are still being written. `started`
    is called once no process is left to fork (a thread may start then)."""
    dates = sorted(job.dates(), key=lambda d: (-job.weight(d), d))
    if workers <= 1 or len(dates) <= 1:
        if started is not None:
            started()
        with OpenFiles() as files:
            yield from (_index_date(job, date, files) for date in dates)
        return
    _DATES_JOB["job"] = job
    try:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(dates)), mp_context=multiprocessing.get_context("fork"), initializer=_open_worker_files
        ) as pool:
            tasks = iter(_date_tasks(job, dates, workers))
            # a few tasks in flight, not all: a result carries its dates' index updates and KPI
            # items, and results the parent has not applied yet would pile up in this process
            running = {pool.submit(_index_dates_in_worker, task) for task in islice(tasks, IN_FLIGHT_PER_WORKER * workers)}
            if started is not None:
                started()  # the workers exist now
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for task in islice(tasks, len(done)):  # as many new tasks as finished
                    running.add(pool.submit(_index_dates_in_worker, task))
                while done:
                    yield from done.pop().result()
    finally:
        _DATES_JOB.clear()


TASKS_PER_WORKER = 16  # tasks a worker gets at least (when there are as many dates): balance at the end
IN_FLIGHT_PER_WORKER = 2


def _date_tasks(job: _DatesJob, dates: list[str], workers: int) -> list[list[str]]:
    """`dates` (biggest first) cut into tasks for the pool: a big date alone, small ones together.

    Why: a batch spanning years has ~2,000 small dates, and a trip through the pool's queues for
    each (pickling, a pipe, threads woken) made 42k futex calls in a five-year batch's run; in tasks,
    2.3k (`strace -f -c`)."""
    weights = [job.weight(date) for date in dates]
    target = sum(weights) / (workers * TASKS_PER_WORKER)
    tasks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for date, weight in zip(dates, weights, strict=True):
        current.append(date)
        size += weight
        if size >= target:
            tasks.append(current)
            current, size = [], 0
    if current:
        tasks.append(current)
    return tasks


_WORKER_FILES: list[OpenFiles] = []  # a date worker's open spill files, kept across its dates


def _open_worker_files() -> None:
    _WORKER_FILES[:] = [OpenFiles()]  # closed when the worker process exits


def _index_dates_in_worker(dates: list[str]) -> list[_DatesIndexed]:
    return [_index_date(_DATES_JOB["job"], date, _WORKER_FILES[0]) for date in dates]


def _index_date(job: _DatesJob, date: str, files: OpenFiles) -> _DatesIndexed:
    """The date's lines of every dataset copied to its partition files; the keys' index updates
    recorded in the result (applied by the parent: the index stays one table per dataset); and, when
    the batch brings the date alone and its rows all stay live, its KPI items."""
    result = _DatesIndexed({d.name: {} for d in job.datasets}, {date}, {}, [], {}, {})
    agg = DateAggregator(job.plan) if job.plan is not None and date in job.alone else None
    for d in job.datasets:
        writers = _PartitionWriters(job.cfg, d, job.out_root, job.stem)
        puts = result.puts[d.name] = []
        span = job.spans[d.name].get(date)
        feed = job.feeds.get(d.name) if agg is not None else None
        pending: list[list[Any]] | None = None  # KPI columns of a few blocks, added together
        source = CanonicalCsv(job.validated_dir / f"{d.name}.csv", quoted=False)
        positions = feed.positions if feed is not None else [d.key_pos]
        for _date, text, cut in source.blocks([span] if span is not None else [], positions, len(d.header), files):
            writers.write_text(date, text, len(cut[0]))
            keys = _read_keys(d, cut[0])
            if not _note_keys(job, d, date, keys, result, puts):
                agg = feed = None  # a newer batch holds some of these keys: the date is recomputed
            if feed is not None:
                pending = feed.extend(pending, feed.columns(date, keys, cut))
                if len(pending[0]) >= AGGREGATE_ROWS:
                    agg.add(d.name, pending)  # type: ignore[union-attr]
                    pending = None
        if pending is not None and agg is not None:
            agg.add(d.name, pending)
        result.written[d.name] = writers.count
        result.files.extend(writers.close())
    if agg is not None:
        result.tables = {table: {date: items} for table, items in agg.items().items()}
    return result


AGGREGATE_ROWS = 4096  # rows a group's metrics are folded over at a time: fewer, bigger buckets


class _KpiColumns:
    """How a dataset's KPI fields (`KpiPlan.fields`) come out of a date's lines: the key's values are
    the ones just read for the index, the partition field is the date itself, the others are cut."""

    def __init__(self, plan: KpiPlan, d: _Partitioned) -> None:
        self.positions = [d.key_pos]  # fields to cut from each line, the key first
        self.sources: list[tuple[str | int, Any]] = []
        for name, reader in zip(plan.fields[d.name], plan.readers(d.name), strict=True):
            pos = d.header.index(name)
            if pos == d.key_pos and reader is d.key_reader:
                self.sources.append(("key", None))
            elif pos == d.part_pos and reader is str:
                self.sources.append(("date", None))
            else:
                self.positions.append(pos)
                self.sources.append((len(self.positions) - 1, reader))

    def columns(self, date: str, keys: list[Any], cut: list[list[str]]) -> list[list[Any]]:
        return [
            keys if src == "key" else [date] * len(keys) if src == "date" else _read_column(reader, cut[src])  # type: ignore[index]
            for src, reader in self.sources
        ]

    @staticmethod
    def extend(pending: list[list[Any]] | None, cols: list[list[Any]]) -> list[list[Any]]:
        if pending is None:
            return cols  # new lists (the keys' too: the index took what it needed from them)
        for have, col in zip(pending, cols, strict=True):
            have.extend(col)
        return pending


def _note_keys(job: _DatesJob, d: _Partitioned, date: str, keys: list[Any], result: _DatesIndexed, puts: list[Any]) -> bool:
    """Record the index updates for `keys`, rows of `date`; False when some row is dead (its key
    already belongs to a newer batch)."""
    index = job.indexes[d.name]
    # an empty index (the store's first batch) holds none of the keys: nothing to look up
    taken = _claim(keys, [date] * len(keys), index.get_many(keys), job.seq, result.moved[d.name], result.touched) if len(index) else None
    put = keys if taken is None else [keys[i] for i in taken]
    bounds = None
    packed: Any = put
    for typecode in "Iq":  # ids as 4 bytes each on their way to the parent when they fit, else 8
        try:
            packed = array(typecode, put)
        except (TypeError, OverflowError):
            continue
        if put:  # found here, over ints, for the parent (over an array, min and max box every id)
            bounds = (min(packed), max(packed))
        break
    puts.append((job.codes[d.name][date], packed, taken is None, bounds))
    return len(put) == len(keys)


def _claim(
    keys: Sequence[Any], dates: Sequence[str], olds: Sequence[Any], seq: int, moved: dict[Any, str], touched: set[str]
) -> list[int] | None:
    """Which rows of this batch (batch `seq`) the index is to point at, given each key's current
    (seq, date) or None: None when no key was seen before (all of them), else their positions. A key
    held by a newer batch stays with it (the row is dead); a key that was on another date moves, and
    that date is noted in `moved` and `touched` (it must be recomputed, its children carried)."""
    if olds.count(None) == len(olds):
        return None
    taken = []
    for i, (key, date, old) in enumerate(zip(keys, dates, olds, strict=True)):
        if old is not None:
            if old[0] > seq:
                continue
            if old[1] != date:
                touched.add(old[1])
                moved[key] = old[1]
        taken.append(i)
    return taken


@dataclass
class _Indexed:
    moved: dict[Any, str]  # key -> the date it was on before this batch moved it
    touched: set[str]
    written: int
    files: list[str]


def _index_dataset(
    job: tuple[PipelineConfig, _Partitioned, Path | None, Path, Path, Path, str, int, list[list[Any]] | None],
) -> _Indexed:
    """One dataset's validated rows into partition files under `out_root`, its index (read from
    `index_in`, empty when None) moved to them and saved to `index_out`; `spans` is its groups sidecar
    as `_read_spans` gave it (None: rows are grouped as they come)."""
    cfg, d, index_in, index_out, validated_dir, out_root, stem, seq, spans = job
    index = KeyTable.load(index_in) if index_in is not None else KeyTable()
    result = _Indexed({}, set(), 0, [])
    # spans are only read from an unquoted file; without them the file is looked at for quotes
    source = CanonicalCsv(validated_dir / f"{d.name}.csv", quoted=False if spans is not None else None)
    writers = _PartitionWriters(cfg, d, out_root, stem, source)

    def update(keys: list[Any], dates: Sequence[str]) -> None:
        taken = _claim(keys, dates, index.get_many(keys), seq, result.moved, result.touched)
        if taken is None:  # all keys new: the first-batch fast path
            code_of = {date: index.code((seq, date)) for date in set(dates)}
            index.put_codes(keys, list(map(code_of.__getitem__, dates)))
        else:
            index.put_many([keys[i] for i in taken], [(seq, dates[i]) for i in taken])

    if spans is not None:  # rows already grouped by date: copy each date's lines as they are
        for date, text, (key_texts,) in source.blocks(spans, [d.key_pos], len(d.header)):
            writers.write_text(date, text, len(key_texts))
            result.touched.add(date)
            update(list(map(d.key_reader, key_texts)), [date] * len(key_texts))
    else:
        for records, (key_texts, dates) in source.select([d.key_pos, d.part_pos], len(d.header)):
            writers.write_chunk(dates, records)
            result.touched.update(dates)
            update(list(map(d.key_reader, key_texts)), dates)
    result.written = writers.count
    result.files = writers.close()
    index.save(index_out)
    return result


def recompute(
    cfg: PipelineConfig, dates: list[str], store: ProcessedStore, work_dir: Path
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every table's complete items of each date, from all live rows of that date.

    Independent per date, so groups of dates can run in parallel (processes here, Map-state
    ECS tasks on AWS) once `index_batch` has published the index."""
    if not dates:  # nothing to read: not even the indexes (megabytes for a big store)
        return {name: {} for name in cfg.kpis}
    cache = _Cache(store, Path(work_dir) / "store")
    datasets = partitioned_datasets(cfg)
    try:
        indexes = {d.name: _load_index(cache, d.name) for d in datasets}
        return recompute_dates(cfg, dates, datasets, indexes, cache)
    finally:
        cache.close()


def date_groups(dates: list[str], groups: int) -> list[list[str]]:
    """Split dates into at most `groups` interleaved groups (neighbouring days spread the load)."""
    groups = max(1, min(groups, len(dates)))
    return [dates[i::groups] for i in range(groups)] if dates else []


def _recompute_group(args: tuple[PipelineConfig, list[str], Path, Path]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    cfg, dates, root, work = args
    return recompute(cfg, dates, LocalStore(root), work)


def _recompute_in_processes(
    cfg: PipelineConfig, dates: list[str], store: LocalStore, work_dir: Path, workers: int
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    jobs = [(cfg, group, store.root, work_dir / f"recompute-{i}") for i, group in enumerate(date_groups(dates, workers))]
    tables: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in cfg.kpis}
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=multiprocessing.get_context("fork")) as pool:
        for part in pool.map(_recompute_group, jobs):
            for name, by_date in part.items():
                tables[name].update(by_date)
    return tables


class _PartitionWriters:
    def __init__(self, cfg: PipelineConfig, d: _Partitioned, root: Path, stem: str, source: CanonicalCsv | None = None) -> None:
        self.cfg, self.d, self.root, self.stem, self.source = cfg, d, root, stem, source
        self.files: dict[str, tuple[Any, Any, str]] = {}
        self.count = 0

    def write(self, date: str, row: Any) -> None:
        self.writer(date).writerow(row)
        self.count += 1

    def writer(self, date: str) -> Any:
        entry = self.files.get(date)
        if entry is None:
            name = f"{_partition_dir(self.cfg, self.d.name, date)}{self.stem}.csv"
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
            writer = csv.writer(fh)
            writer.writerow(self.d.header)
            entry = self.files[date] = (fh, writer, name)
        return entry[1]

    def write_chunk(self, dates: Sequence[str], records: list[Any]) -> None:
        """Records read from `self.source` (`CanonicalCsv.select`), each to its date's file."""
        assert self.source is not None
        if dates.count(dates[0]) == len(dates):
            groups: dict[str, list[Any]] = {dates[0]: records}
        else:
            groups = defaultdict(list)
            for date, record in zip(dates, records, strict=True):
                groups[date].append(record)
        for date, group in groups.items():
            writer = self.writer(date)
            self.source.write_records(self.files[date][0], writer, group)
        self.count += len(records)

    def write_text(self, date: str, text: str, rows: int) -> None:
        """Whole CSV lines (with their terminators) for one date, as they were in the validated file."""
        self.writer(date)
        self.files[date][0].write(text)
        self.count += rows

    def close(self) -> list[str]:
        for fh, _, _ in self.files.values():
            fh.close()
        return [name for _, _, name in self.files.values()]


def _carry_children(
    cfg: PipelineConfig,
    d: _Partitioned,
    moved_parents: dict[Any, str],
    indexes: dict[str, KeyTable],
    cache: _Cache,
    out_root: Path,
    seq: int,
    stem: str,
    new_files: list[str],
) -> tuple[int, list[str]]:
    """Copy the live children of moved parents from the old date to the parent's new date:
    (rows carried, the dates they went to)."""
    parent_index, index = indexes[d.parent or ""], indexes[d.name]
    by_old_date: dict[str, set[Any]] = defaultdict(set)
    for key, old_date in moved_parents.items():
        by_old_date[old_date].add(key)
    writers = _PartitionWriters(cfg, d, out_root, stem + "-carried")
    carried = 0
    for old_date, parents in sorted(by_old_date.items()):
        for name, file_seq in _partition_files(cache, cfg, d.name, old_date):
            path = cache.path(name)
            if path is None:
                continue
            for row in petl.data(petl.fromcsv(str(path), encoding="utf-8")):
                parent = d.parent_reader(row[d.parent_pos])
                if parent not in parents:
                    continue
                key = d.key_reader(row[d.key_pos])
                if index.get(key) != (file_seq, old_date):
                    continue  # re-sent in this batch, or replaced earlier: not this row to carry
                new_date = parent_index.get(parent)[1]
                moved_row = list(row)
                moved_row[d.part_pos] = new_date
                writers.write(new_date, moved_row)
                index.put(key, (seq, new_date))
                carried += 1
    dates_in = sorted(writers.files)
    new_files.extend(writers.close())
    return carried, dates_in


def _partition_files(cache: _Cache, cfg: PipelineConfig, dataset: str, date: str) -> list[tuple[str, int]]:
    prefix = _partition_dir(cfg, dataset, date)
    files = []
    for name in cache.list(prefix):
        base = name[len(prefix) :]
        if "/" in base or not base.endswith(".csv"):
            continue
        files.append((name, int(base.split("-", 1)[0])))
    return files


def recompute_dates(
    cfg: PipelineConfig,
    dates: list[str],
    datasets: list[_Partitioned],
    indexes: dict[str, KeyTable],
    cache: _Cache,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every table's complete items of each date, from all live rows of that date."""
    plan = KpiPlan.compile(cfg)
    tables: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in plan.tables}
    feeding = [d for d in datasets if d.name in plan.fields]

    def files_of(date: str) -> list[str]:
        return [name for d in feeding for name, _seq in _partition_files(cache, cfg, d.name, date)]

    for i, date in enumerate(dates):
        if i % PREFETCH_DATES == 0:  # the files of the dates ahead, fetched while these are read
            cache.prefetch([name for ahead in dates[i : i + 2 * PREFETCH_DATES] for name in files_of(ahead)])
        agg = DateAggregator(plan)
        for d in feeding:
            positions = [d.header.index(f) for f in plan.fields[d.name]]
            readers = plan.readers(d.name)
            index = indexes[d.name]
            for name, file_seq in _partition_files(cache, cfg, d.name, date):
                path = cache.path(name)
                if path is None:
                    continue
                want = (file_seq, date)
                for _records, (key_texts, *raw) in CanonicalCsv(path).select([d.key_pos, *positions], len(d.header)):
                    states = index.get_many(_read_keys(d, key_texts))
                    if states.count(want) != len(states):
                        live = [i for i, state in enumerate(states) if state == want]
                        if not live:
                            continue
                        raw = [[col[i] for i in live] for col in raw]
                    agg.add(d.name, [_read_column(reader, col) for reader, col in zip(readers, raw, strict=True)])
        for table, items in agg.items().items():
            tables[table][date] = items
    return tables


def _read_keys(d: _Partitioned, texts: list[str]) -> list[Any]:
    return read_ints(texts) if d.key_reader is int else list(map(d.key_reader, texts))


def _read_column(reader: Any, texts: Sequence[str]) -> list[Any]:
    """Canonical text back to typed values; empty text is null."""
    if reader is str:
        return [t if t != "" else None for t in texts] if "" in texts else list(texts)
    if reader is read_bool:
        return [t == "true" if t != "" else None for t in texts] if "" in texts else list(map("true".__eq__, texts))
    if "" in texts:
        return [reader(t) if t != "" else None for t in texts]
    return read_ints(list(texts)) if reader is int else list(map(reader, texts))


class _Digest:
    """`_content_digest` of a validated batch, run now or in a thread beside other work."""

    def __init__(self, validated_dir: Path, datasets: list[_Partitioned]) -> None:
        self.validated_dir, self.datasets = validated_dir, datasets
        self.thread: threading.Thread | None = None
        self.digest: str | None = None
        self.error: BaseException | None = None

    def run(self) -> str:
        return _content_digest(self.validated_dir, self.datasets)

    def start(self) -> None:
        def work() -> None:
            try:
                self.digest = self.run()
            except BaseException as exc:  # handed to the caller by result()
                self.error = exc

        self.thread = threading.Thread(target=work, name="content-digest", daemon=True)
        self.thread.start()

    def result(self) -> str:
        if self.thread is None:
            return self.run()
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.digest is not None
        return self.digest


def _content_digest(validated_dir: Path, datasets: list[_Partitioned]) -> str:
    """What identifies a batch's rows, whatever its batch id (validated files are canonical text)."""
    digest = hashlib.sha256()
    for d in datasets:
        digest.update(f"{d.name}\0".encode())
        path = validated_dir / f"{d.name}.csv"
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        spans = _groups(path) or []
        if any(len(span) > 4 for span in spans):  # rows left in spill files: the bytes a joined file holds
            for chunk in read_bytes([segment for span in spans for segment in span_segments(path, span)]):
                digest.update(chunk)  # (one pass: each spill file opened once)
    return digest.hexdigest()


def partitioned_rows(cfg: PipelineConfig, validated_dir: Path) -> int:
    """Valid rows of the partitioned datasets of a validated batch (from the groups sidecars; a file
    without one is counted by its lines): what sizes the transform's work."""
    rows = 0
    for d in partitioned_datasets(cfg):
        path = Path(validated_dir) / f"{d.name}.csv"
        sidecar = groups_path(path)
        if sidecar.is_file():
            rows += sum(span[3] for span in json.loads(sidecar.read_text(encoding="utf-8"))["groups"])
        elif path.is_file():
            with open(path, "rb") as fh:
                rows += max(sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b"")) - 1, 0)
    return rows


def _read_spans(validated_csv: Path) -> list[list[Any]] | None:
    """A validated file's groups sidecar, or None without one (then rows are grouped as they come)
    or when the file holds a quote (then its lines are not all rows: it is read with csv.reader)."""
    spans = _groups(validated_csv)
    if spans is None or CanonicalCsv(validated_csv).quoted:  # (segments are only left unquoted)
        return None
    return spans


def _groups(validated_csv: Path) -> list[list[Any]] | None:
    path = groups_path(validated_csv)
    if not path.is_file():
        return None
    spans: list[list[Any]] = json.loads(path.read_text(encoding="utf-8"))["groups"]
    return spans


def _load_index(cache: _Cache, dataset: str) -> KeyTable:
    path = cache.path(f"_index/{dataset}.idx")
    return KeyTable.load(path) if path is not None else KeyTable()


def _read_json(cache: _Cache, name: str) -> Any:
    path = cache.path(name)
    return json.loads(path.read_text()) if path is not None else None


def _publish_json(cache: _Cache, work_dir: Path, name: str, data: Any) -> None:
    path = work_dir / "json" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    cache.publish(name, path)
