"""Benchmark matrix: kpipe's executors next to a whole-batch pandas job and plain DuckDB SQL, per batch shape.

For each shape of batch (the generator's own, CRLF with every field quoted, a category holding a comma,
64 shuffled files a dataset) every contender runs in turn, each as its own subprocess, ``--repeat N``
rounds round-robin (a slow spell of this shared machine then hits them all alike); the table gives the
median wall time, rows/s, the highest peak RSS and the ratios to pandas and to plain DuckDB SQL. The KPI
tables of all contenders are compared item by item (Decimal values): a fast wrong answer is a failure.

Usage (see bench/README.md):
    .venv/bin/python bench/run.py                          # 400k orders (~1.3M rows), every shape, 3 rounds
    .venv/bin/python bench/run.py --orders 20000 --repeat 1 --shapes generated
    .venv/bin/python bench/run.py --petl --big --json bench/results/run.json
    .venv/bin/python bench/run.py --engines current        # `kpipe process` without --engine
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIG_ORDERS = 1_500_000  # ~4.8M rows: the "5M-row" size (--big, generated shape only)
SHAPES = ("generated", "crlf-quoted", "comma-category", "64-files-shuffled")
SHAPE_VERSION = 1  # bump when a shape's transform changes: cached shapes are rebuilt
COMMA_CATEGORY = ("Tops & Tees", "Tops, Tees")  # the category renamed in comma-category
SPLIT_FILES = 64
ENGINES = ("duckdb", "petl", "current")  # current: `kpipe process` without --engine (its default)
BASELINES = ("duckdb-sql", "pandas")
KEYS = {"OrderKPI": ("order_date",), "CategoryKPI": ("category", "order_date")}
METRICS = {
    "OrderKPI": ("total_orders", "total_revenue", "total_items_sold", "return_rate", "unique_customers"),
    "CategoryKPI": ("daily_revenue", "avg_order_value", "avg_return_rate"),
}
PAGE = os.sysconf("SC_PAGE_SIZE")
LOW_DISK = 4 << 30  # below this much free space, earlier shapes' outputs are deleted before a shape runs
Tables = dict[str, dict[tuple[str, ...], tuple[Any, ...]]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data: one generated batch, its shapes


def _generator_fingerprint() -> str:
    """Cached data is reused only while the generator's source is unchanged."""
    return hashlib.sha256((ROOT / "kpipe" / "generate.py").read_bytes()).hexdigest()[:12]


def cache_root(data_dir: Path, orders: int, seed: int) -> Path:
    return data_dir / f"shapes-orders-{orders}-seed-{seed}-{_generator_fingerprint()}"


def ensure_shape(data_dir: Path, orders: int, seed: int, shape: str) -> tuple[Path, int, int]:
    """(batch dir, data rows, files) of ``shape`` at ``orders``, made once and cached in ``data_dir``.

    Made in a child process so the harness stays small and a failure there is reported, not inherited.
    """
    root = cache_root(data_dir, orders, seed)
    if shape != "generated":
        ensure_shape(data_dir, orders, seed, "generated")
    marker = root / shape / "meta.json"
    meta = json.loads(marker.read_text()) if marker.is_file() else {}
    if meta.get("version") != SHAPE_VERSION:
        if shape == "generated":
            for stale in data_dir.glob(f"shapes-orders-{orders}-seed-{seed}-*"):  # an older generator's
                if stale != root:
                    shutil.rmtree(stale, ignore_errors=True)
        log(f"preparing {shape} at {orders:,} orders into {root / shape} ...")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--prepare", str(root), shape, "--orders", str(orders),
                        "--seed", str(seed)], check=True, cwd=ROOT)
        meta = json.loads(marker.read_text())
        log(f"  {meta['rows']:,} rows in {meta['files']} files, {time.perf_counter() - t0:.1f} s")
    return root / shape / "batch-1", int(meta["rows"]), int(meta["files"])


def prepare(root: Path, shape: str, orders: int, seed: int) -> None:
    """The child side of ensure_shape: build the shape into a scratch name, rename it, write the marker."""
    tmp = root / f".{shape}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root / shape, ignore_errors=True)
    if shape == "generated":
        sys.path.insert(0, str(ROOT))
        from kpipe.generate import generate_batches

        generate_batches(tmp, orders, seed=seed)
    else:
        src = root / "generated" / "batch-1"
        dst = tmp / "batch-1"
        {"crlf-quoted": _crlf_quoted, "comma-category": _comma_category,
         "64-files-shuffled": _shuffled}[shape](src, dst, random.Random(f"{seed}-{shape}"))
        if count_rows(dst) != count_rows(src):
            raise SystemExit(f"{shape}: the rewritten batch lost or gained rows")
    files = list((tmp / "batch-1").rglob("*.csv"))
    tmp.rename(root / shape)
    meta = {"version": SHAPE_VERSION, "orders": orders, "seed": seed, "files": len(files),
            "rows": count_rows(root / shape / "batch-1")}
    (root / shape / "meta.json").write_text(json.dumps(meta))


def batch_files(batch: Path) -> list[Path]:
    return [batch / "products.csv", *sorted((batch / "orders").glob("*.csv")),
            *sorted((batch / "order_items").glob("*.csv"))]


def count_rows(batch: Path) -> int:
    n = 0
    for p in batch_files(batch):
        with p.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            n += max(0, sum(1 for _ in csv.reader(fh)) - 1)
    return n


def _open(path: Path, mode: str = "r") -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open(mode, encoding="utf-8", errors="surrogateescape", newline="")


def _rewrite(src: Path, dst: Path, quoting: int = csv.QUOTE_MINIMAL, end: str = "\n", edit: Any = None) -> None:
    with _open(src) as fin, _open(dst, "w") as fout:
        rows = csv.reader(fin)
        header = next(rows)
        writer = csv.writer(fout, quoting=quoting, lineterminator=end)
        writer.writerow(header)
        writer.writerows(rows if edit is None else (edit(header, r) for r in rows))


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _crlf_quoted(src: Path, dst: Path, _rng: random.Random) -> None:
    """CRLF line ends and every field quoted (csv.QUOTE_ALL), as some export tools write them."""
    for p in batch_files(src):
        _rewrite(p, dst / p.relative_to(src), csv.QUOTE_ALL, "\r\n")


def _comma_category(src: Path, dst: Path, _rng: random.Random) -> None:
    """One category's name holds a comma, so that field is quoted in products.csv; the rest unchanged."""
    old, new = COMMA_CATEGORY

    def edit(header: list[str], row: list[str]) -> list[str]:
        i = header.index("category")
        return [*row[:i], new, *row[i + 1:]] if row[i] == old else row

    _rewrite(src / "products.csv", dst / "products.csv", edit=edit)
    for p in batch_files(src)[1:]:
        _link(p, dst / p.relative_to(src))


def _shuffled(src: Path, dst: Path, rng: random.Random) -> None:
    """orders/ and order_items/ each as 64 files, rows in random order (products.csv shuffled in place).

    Each row goes to a random file among those with its source file's header (item files with and
    without ``quantity``: the files are shared out between the headers by size), then every file is
    shuffled. Memory stays at one output file's rows.
    """
    with _open(src / "products.csv") as fh:
        header, *rows = list(csv.reader(fh))
    rng.shuffle(rows)
    with _open(dst / "products.csv", "w") as fh:
        csv.writer(fh, lineterminator="\n").writerows([header, *rows])
    for dataset in ("orders", "order_items"):
        groups: dict[tuple[str, ...], list[Path]] = {}
        for p in sorted((src / dataset).glob("*.csv")):
            with _open(p) as fh:
                groups.setdefault(tuple(next(csv.reader(fh))), []).append(p)
        sizes = {h: sum(p.stat().st_size for p in ps) for h, ps in groups.items()}
        counts = {h: max(1, round(SPLIT_FILES * s / sum(sizes.values()))) for h, s in sizes.items()}
        biggest = max(counts, key=lambda h: counts[h])
        counts[biggest] += SPLIT_FILES - sum(counts.values())
        labels = [h for h, n in counts.items() for _ in range(n)]
        rng.shuffle(labels)
        outs = [dst / dataset / f"part-{j + 1:04d}.csv" for j in range(len(labels))]
        handles = [_open(p, "w") for p in outs]
        try:
            writers = [csv.writer(fh, lineterminator="\n") for fh in handles]
            for w, h in zip(writers, labels, strict=True):
                w.writerow(h)
            for h, paths in groups.items():
                mine = [w.writerow for w, lab in zip(writers, labels, strict=True) if lab == h]
                for p in paths:
                    with _open(p) as fh:
                        rows_in = csv.reader(fh)
                        next(rows_in)
                        for row in rows_in:
                            rng.choice(mine)(row)
        finally:
            for fh in handles:
                fh.close()
        for p in outs:
            with _open(p) as fh:
                header, *rows = list(csv.reader(fh))
            rng.shuffle(rows)
            with _open(p, "w") as fh:
                csv.writer(fh, lineterminator="\n").writerows([header, *rows])


# ---------------------------------------------------------------- measuring one run


# The contender is spawned by this tiny launcher, which reports (exit code, wall s, ru_maxrss KiB) from its
# own os.wait4. Why not wait4 from the harness: on Linux a child's ru_maxrss starts at the high-water mark
# of the image it exec'd over, so every contender would carry the harness's own 20+ MiB; a fresh
# ``python -S -I`` launcher brings that floor down to its own ~8 MiB (``launcher_floor_mib``). ru_maxrss
# is the largest single process of the tree (Linux reports the max over the waited-for descendants).
LAUNCHER = (
    "import os,sys,time\n"
    "t=time.perf_counter()\n"
    "pid=os.posix_spawnp(sys.argv[2],sys.argv[2:],os.environ)\n"
    "_,st,ru=os.wait4(pid,0)\n"
    "w=time.perf_counter()-t\n"
    "f=open(sys.argv[1],'w');f.write('%d %r %d'%(os.waitstatus_to_exitcode(st),w,ru.ru_maxrss));f.close()\n"
)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE
    except OSError:
        return 0


def _descendants_rss(root_pid: int) -> int:
    """Bytes of RSS summed over all descendants of ``root_pid`` (not itself), from /proc."""
    children: dict[int, list[int]] = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        children.setdefault(int(stat[stat.rindex(b")") + 2:].split()[1]), []).append(int(e))
    total, todo = 0, list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        total += _rss(pid)
        todo.extend(children.get(pid, []))
    return total


@dataclass
class Run:
    """One contender's run in one round."""

    round: int
    exit_code: int = 0
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0  # ru_maxrss: the largest single process of the contender's tree
    tree_rss_mib: float = 0.0  # the sum over the tree, sampled every 50 ms (matters with worker processes)
    error: str = ""
    kpi: str = ""  # "reference", "same", "N differences", "unreadable: ..."
    tables: Tables | None = field(default=None, repr=False)


def launch(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float, stdout: Any, stderr: Any,
           sample: bool = True) -> tuple[int, float, int, int, str]:
    """(exit code, wall s, ru_maxrss KiB, sampled peak tree RSS bytes, problem) of ``cmd`` under the launcher."""
    res = cwd / ".launcher-result"
    launcher = subprocess.Popen([sys.executable, "-S", "-I", "-c", LAUNCHER, str(res), *cmd], cwd=cwd, env=env,
                                stdout=stdout, stderr=stderr, start_new_session=True)
    peak = [0]
    done = threading.Event()

    def sampler() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _descendants_rss(launcher.pid))

    thread = threading.Thread(target=sampler, daemon=True)
    if sample:
        thread.start()
    problem = ""
    try:
        launcher.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        problem = f"timed out after {timeout:.0f} s (killed)"
        os.killpg(launcher.pid, signal.SIGKILL)  # its own session: the launcher, the contender, its workers
        launcher.wait()
    finally:
        done.set()
        if sample:
            thread.join()
    if problem or not res.is_file():
        return launcher.returncode or 1, 0.0, 0, peak[0], problem or f"launcher exited {launcher.returncode}"
    code, wall, maxrss = res.read_text().split()
    res.unlink()
    return int(code), float(wall), int(maxrss), peak[0], ""


def launcher_floor_mib() -> float:
    """ru_maxrss the launcher reports for ``true``: the floor under every peak RSS in the table."""
    with tempfile.TemporaryDirectory(prefix="kpipe-bench-") as tmp:
        return launch(["true"], Path(tmp), dict(os.environ), 60, subprocess.DEVNULL, subprocess.DEVNULL, False)[2] / 1024


# ---------------------------------------------------------------- contenders and their KPI tables


@dataclass
class Contender:
    name: str
    kind: str  # an engine of ENGINES or a baseline of BASELINES
    unavailable: str = ""  # why it cannot run here (e.g. `kpipe process` has no --engine yet)
    runs: list[Run] = field(default_factory=list)

    def command(self, batch: Path, out: Path) -> list[str]:
        if self.kind == "pandas":
            return [sys.executable, str(BENCH / "pandas_baseline.py"), str(batch), "--out", str(out)]
        if self.kind == "duckdb-sql":
            return [sys.executable, str(BENCH / "duckdb_baseline.py"), str(batch), "--out", str(out)]
        engine = [] if self.kind == "current" else ["--engine", self.kind]
        return [*kpipe_command(), "process", str(batch), "--out", str(out), *engine]

    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.exit_code == 0 and not r.error]

    def median_wall(self) -> float:
        ok = self.ok_runs()
        return statistics.median(r.wall_s for r in ok) if ok else 0.0

    def peak_rss(self) -> float:
        return max((r.peak_rss_mib for r in self.ok_runs()), default=0.0)


def kpipe_command() -> list[str]:
    script = Path(sys.executable).parent / "kpipe"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kpipe.cli"]


def kpipe_has_engine_option() -> tuple[bool, str]:
    proc = subprocess.run([*kpipe_command(), "process", "--help"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return False, f"`kpipe process --help` failed: {proc.stderr.strip()[-300:]}"
    return "--engine" in proc.stdout, "`kpipe process` has no --engine option yet"


def contenders_for(orders: int, smallest: int, engines: list[str], petl: bool, baselines: list[str],
                   engine_problem: str) -> list[Contender]:
    kinds = [*engines, *(["petl"] if petl and orders == smallest and "petl" not in engines else [])]
    out = [Contender("kpipe (current)" if k == "current" else f"kpipe --engine {k}", k,
                     engine_problem if k != "current" else "") for k in kinds]
    return out + [Contender(b, b) for b in BASELINES if b in baselines]


def _num(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return Decimal(v)
        except InvalidOperation:
            return v
    return v


def load_tables(out: Path) -> Tables:
    tables: Tables = {}
    for table in KEYS:
        items = json.loads((out / f"{table}.json").read_text(encoding="utf-8"), parse_float=Decimal, parse_int=Decimal)
        rows: dict[tuple[str, ...], tuple[Any, ...]] = {}
        for it in items:
            key = tuple(str(it.get(k)) for k in KEYS[table])
            if key in rows:
                raise ValueError(f"{table}: two items for {key}")
            rows[key] = tuple(_num(it.get(m)) for m in METRICS[table])
        tables[table] = rows
    return tables


def compare(a: Tables, b: Tables, a_name: str, b_name: str) -> list[str]:
    """Human-readable differences between two contenders' KPI tables (empty: the same items)."""
    diffs: list[str] = []
    for table in KEYS:
        ta, tb = a[table], b[table]
        for key in sorted(ta.keys() | tb.keys()):
            item = f"{table}[{', '.join(key)}]"
            if key not in ta or key not in tb:
                diffs.append(f"{item}: only in {a_name if key in ta else b_name}")
                continue
            for m, va, vb in zip(METRICS[table], ta[key], tb[key], strict=True):
                if va != vb:
                    diffs.append(f"{item}.{m}: {a_name} {va} != {b_name} {vb}")
    return diffs


# ---------------------------------------------------------------- one cell: a shape at a size, all contenders


@dataclass
class Cell:
    shape: str
    orders: int
    contenders: list[Contender]
    batch: str = ""
    rows: int = 0
    files: int = 0
    problem: str = ""  # the shape could not be prepared
    load: list[float] = field(default_factory=list)
    diffs: dict[str, list[str]] = field(default_factory=dict)
    reference: str = ""
    reference_tables: Tables | None = field(default=None, repr=False)
    vs_generated: list[str] | None = None  # differences of the reference's tables from the generated shape's


def run_cell(cell: Cell, work: Path, repeat: int, timeout: float) -> None:
    batch = Path(cell.batch)
    if shutil.disk_usage(work).free < LOW_DISK:
        log(f"!! less than {LOW_DISK >> 30} GiB free: deleting the earlier shapes' outputs now (the next runs may be slower)")
        for d in work.iterdir():
            shutil.rmtree(d, ignore_errors=True)
    cell.load.append(os.getloadavg()[0])
    runnable = [c for c in cell.contenders if not c.unavailable]
    for k in range(repeat):
        log(f"-- {cell.shape} at {cell.orders:,} orders: round {k + 1} of {repeat}")
        turn = k % len(runnable) if runnable else 0  # each round starts with the next contender
        for c in runnable[turn:] + runnable[:turn]:
            run = Run(round=k + 1)
            here = work / f"{cell.shape}-{cell.orders}" / f"round-{k + 1}" / c.kind  # a fresh OUT every run
            (here / "tmp").mkdir(parents=True)
            out = here / "out"
            cmd = c.command(batch, out)
            log(f"running {c.name}: {' '.join(cmd)}")
            env = {**os.environ, "TMPDIR": str(here / "tmp")}
            with (here / "stdout").open("wb") as so, (here / "stderr").open("wb") as se:
                run.exit_code, run.wall_s, maxrss, tree, problem = launch(cmd, here, env, timeout, so, se)
            run.peak_rss_mib, run.tree_rss_mib = maxrss / 1024, tree / 2**20
            if run.exit_code != 0 or problem:
                tail = (here / "stderr").read_bytes()[-1500:].decode("utf-8", "replace").strip()
                run.error = problem or f"exit {run.exit_code}: {tail.splitlines()[-1] if tail else '(no stderr)'}"
                log(f"  !! {c.name} failed ({problem or f'exit {run.exit_code}'}):\n{tail}")
            else:
                try:
                    run.tables = load_tables(out)
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    run.error = f"KPI tables unreadable: {exc!r}"
                log(f"  {run.wall_s:.2f} s, peak RSS {run.peak_rss_mib:.0f} MiB" + (f"; {run.error}" if run.error else ""))
            c.runs.append(run)
    cell.load.append(os.getloadavg()[0])
    # the reference: pandas (tests check it against the oracle), else plain DuckDB SQL, else whoever ran
    done = [c for c in cell.contenders if c.ok_runs()]
    ref = next((c for k in ("pandas", "duckdb-sql") for c in done if c.kind == k), done[0] if done else None)
    if ref is None:
        return
    cell.reference = ref.name
    base = ref.ok_runs()[0]
    cell.reference_tables = base.tables
    for c in done:
        for r in c.ok_runs():
            if r is base:
                r.kpi = "reference"
                continue
            d = compare(r.tables, base.tables, c.name, ref.name)  # type: ignore[arg-type]
            r.kpi = f"{len(d)} differences" if d else "same"
            if d and c.name not in cell.diffs:
                cell.diffs[c.name] = d
        for r in c.ok_runs():
            r.tables = None


# ---------------------------------------------------------------- reporting


def _ratio(x: float, base: Contender | None, rss: bool = False) -> float | None:
    b = (base.peak_rss() if rss else base.median_wall()) if base else 0.0
    return round(x / b, 3) if b and x else None


def _x(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def summary(c: Contender, cell: Cell) -> dict[str, Any]:
    pandas = next((x for x in cell.contenders if x.kind == "pandas" and x.ok_runs()), None)
    sql = next((x for x in cell.contenders if x.kind == "duckdb-sql" and x.ok_runs()), None)
    wall, rss = c.median_wall(), c.peak_rss()
    failed = [r for r in c.runs if r.exit_code != 0 or r.error]
    kinds = {r.kpi for r in c.ok_runs()}
    other = ", ".join(sorted(kinds - {"reference", "same"}))
    if "reference" in kinds:
        kpi = "reference" + (f" (its other rounds: {other})" if other else "")
    elif other:
        kpi = f"DIFFER from {cell.reference}: {other}"
    else:
        kpi = f"= {cell.reference}" if kinds else ""
    return {
        "name": c.name, "kind": c.kind, "unavailable": c.unavailable,
        "median_wall_s": round(wall, 3), "rows_per_s": round(cell.rows / wall) if wall else 0,
        "peak_rss_mib": round(rss, 1), "tree_rss_mib": round(max((r.tree_rss_mib for r in c.ok_runs()), default=0), 1),
        "wall_vs_pandas": _ratio(wall, pandas), "rss_vs_pandas": _ratio(rss, pandas, True),
        "wall_vs_duckdb_sql": _ratio(wall, sql), "kpi": kpi,
        "failed_rounds": len(failed), "errors": sorted({r.error for r in failed}),
        "rounds": [{k: v for k, v in r.__dict__.items() if k != "tables"} for r in c.runs],
    }


def table(cells: list[Cell], repeat: int, floor: float) -> str:
    head = (f"{'shape / contender':<26} {'wall s':>7}  {'rows/s':>10}  {'peak RSS MiB':>12}  {'wall/pandas':>11}  "
            f"{'RSS/pandas':>10}  {'wall/duckdb-sql':>15}  KPI tables")
    lines = [head, "-" * len(head)]
    for cell in cells:
        load = f"load {cell.load[0]:.1f}->{cell.load[-1]:.1f}" if cell.load else ""
        lines.append(f"{cell.shape}, {cell.orders:,} orders, {cell.rows:,} rows, {cell.files} files  {load}")
        if cell.problem:
            lines.append(f"  NOT RUN: {cell.problem}")
            continue
        for c in cell.contenders:
            s = summary(c, cell)
            if c.unavailable:
                lines.append(f"  {c.name:<24} SKIPPED: {c.unavailable}")
                continue
            if not c.ok_runs():
                lines.append(f"  {c.name:<24} FAILED: {'; '.join(s['errors'])[:150]}")
                continue
            note = f"  (failed {s['failed_rounds']} of {len(c.runs)} rounds)" if s["failed_rounds"] else ""
            lines.append(f"  {c.name:<24} {s['median_wall_s']:>7.2f}  {s['rows_per_s']:>10,}  {s['peak_rss_mib']:>12.0f}  "
                         f"{_x(s['wall_vs_pandas']):>11}  {_x(s['rss_vs_pandas']):>10}  {_x(s['wall_vs_duckdb_sql']):>15}  "
                         f"{s['kpi']}{note}")
        if cell.vs_generated is not None:
            lines.append(f"  (KPI tables {'the same as' if not cell.vs_generated else 'DIFFER from'} the generated shape's"
                         + (", the comma category named back" if cell.shape == "comma-category" else "") + ")")
    lines.append(f"wall s: median of {repeat} round(s), spawn to reap; peak RSS: the highest ru_maxrss of the rounds "
                 f"(largest single process, {floor:.0f} MiB launcher floor included); rows/s: data rows / wall s")
    return "\n".join(lines)


def check_across_shapes(cells: list[Cell]) -> None:
    """Every shape holds the generated batch's data: its reference KPI tables must be the generated shape's
    (comma-category's with the category named back). A difference means a shape's rewrite is wrong."""
    generated = {c.orders: c.reference_tables for c in cells if c.shape == "generated" and c.reference_tables}
    old, new = COMMA_CATEGORY
    for cell in cells:
        if cell.shape == "generated" or cell.reference_tables is None or cell.orders not in generated:
            continue
        tables = cell.reference_tables
        if cell.shape == "comma-category":
            tables = {t: {tuple(old if v == new else v for v in k): vals for k, vals in rows.items()}
                      for t, rows in tables.items()}
        cell.vs_generated = compare(tables, generated[cell.orders], cell.shape, "generated")  # type: ignore[arg-type]


# ---------------------------------------------------------------- main


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    return ", ".join(f"{n} {v(n)}" for n in ("duckdb", "pandas", "petl"))


def _csv_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def clean_stale_work(work_root: Path) -> None:
    """Remove work dirs left by bench runs that died (their pid is in the name and no longer alive)."""
    for d in work_root.glob("run-*"):
        try:
            os.kill(int(d.name.split("-")[1]), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="kpipe's executors vs pandas vs plain DuckDB SQL, per batch shape")
    ap.add_argument("--orders", type=int, nargs="+", default=[400_000], help="orders per batch (default 400000: ~1.3M rows)")
    ap.add_argument("--shapes", type=lambda t: _csv_list(t, SHAPES, "shape"), default=list(SHAPES),
                    help=f"comma-separated (default all: {','.join(SHAPES)})")
    ap.add_argument("--big", action="store_true", help=f"also the generated shape at {BIG_ORDERS:,} orders (~4.8M rows)")
    ap.add_argument("--engines", type=lambda t: _csv_list(t, ENGINES, "engine"), default=["duckdb"],
                    help="kpipe engines on every shape (default duckdb; 'current' = `kpipe process` without --engine)")
    ap.add_argument("--petl", action="store_true", help="also `kpipe process --engine petl`, at the smallest --orders only")
    ap.add_argument("--baselines", type=lambda t: _csv_list(t, BASELINES, "baseline"), default=list(BASELINES),
                    help="default duckdb-sql,pandas")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of every contender; medians reported (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a run is killed (default 1800)")
    ap.add_argument("--data-dir", type=Path, default=BENCH / "data", help="cache of batches and work dirs (bench/data)")
    ap.add_argument("--keep", type=Path, default=None, help="write every run's OUT under this directory and keep it")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the raw numbers as JSON to PATH")
    ap.add_argument("--prepare", nargs=2, metavar=("ROOT", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(Path(args.prepare[0]), args.prepare[1], args.orders[0], args.seed)
        return 0
    repeat = max(1, args.repeat)

    has_engine, engine_problem = kpipe_has_engine_option()
    wanted_engines = [e for e in args.engines if e != "current"] + (["petl"] if args.petl else [])
    if wanted_engines and not has_engine:
        log(f"NOTE: {engine_problem}: the --engine contenders are reported as skipped")
    sizes = sorted(set(args.orders))
    plan = [(shape, n) for n in sizes for shape in args.shapes]
    if args.big and ("generated", BIG_ORDERS) not in plan:
        plan.append(("generated", BIG_ORDERS))
    smallest = min(n for _, n in plan)
    cells = [Cell(shape, n, contenders_for(n, smallest, args.engines, args.petl, args.baselines,
                                           "" if has_engine else engine_problem)) for shape, n in plan]

    floor = launcher_floor_mib()
    work_root = args.keep or args.data_dir / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=work_root))
    log(f"work dir {work} ({'kept' if args.keep else 'deleted at the end'})")
    started = time.time()
    try:
        for cell in cells:
            try:
                batch, cell.rows, cell.files = ensure_shape(args.data_dir, cell.orders, args.seed, cell.shape)
                cell.batch = str(batch)
            except (subprocess.CalledProcessError, OSError, ValueError, KeyError) as exc:
                cell.problem = f"preparing the shape failed: {exc}"
                log(f"!! {cell.shape} at {cell.orders:,} orders: {cell.problem}")
                continue
            run_cell(cell, work, repeat, args.timeout)
    finally:
        if not args.keep:  # deleted only now: freeing many inodes right before a run slows the next one down
            shutil.rmtree(work, ignore_errors=True)
            clean_stale_work(work_root)

    print(f"\n== kpipe bench, {time.strftime('%Y-%m-%d %H:%M')}: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{versions()}; {repeat} round(s), {time.time() - started:.0f} s ==")
    check_across_shapes(cells)
    print(table(cells, repeat, floor))
    failed = False
    for cell in cells:
        failed |= bool(cell.problem)
        for c in cell.contenders:
            failed |= bool(c.unavailable) or any(r.exit_code != 0 or r.error for r in c.runs)
        failed |= bool(cell.diffs)
        if cell.vs_generated:
            failed = True
            print(f"\n!! {cell.shape} at {cell.orders:,} orders: {cell.reference}'s KPI tables differ from the generated "
                  "shape's (the shape's rewrite changed the data?):\n" + "\n".join(f"!!   {d}" for d in cell.vs_generated[:10]))
        for name, diffs in cell.diffs.items():
            print("\n" + "!" * 78 + f"\n!! KPI MISMATCH ({cell.shape}, {cell.orders:,} orders): {name} vs "
                  f"{cell.reference}: {len(diffs)} difference(s)\n" + "\n".join(f"!!   {d}" for d in diffs[:20])
                  + "\n" + "!" * 78)
    if args.json:
        doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": sys.version.split()[0], "cpus": os.cpu_count(),
               "repeat": repeat, "launcher_floor_mib": round(floor, 1), "ok": not failed,
               "cells": [{"shape": c.shape, "orders": c.orders, "rows": c.rows, "files": c.files, "batch": c.batch,
                          "problem": c.problem, "load": c.load, "reference": c.reference,
                          "same_as_generated": None if c.vs_generated is None else not c.vs_generated,
                          "kpi_differences": {k: v[:50] for k, v in c.diffs.items()},
                          "contenders": [summary(x, c) for x in c.contenders]} for c in cells]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        log(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
