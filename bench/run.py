"""Benchmark: kpipe's engine vs a whole-batch pandas job vs a bare csv pass, on one generated batch.

Why this shape: "fast enough" only means something next to the obvious alternatives. pandas is the
speed yardstick (and the memory cautionary tale); the bare ``csv.reader -> csv.writer`` pass is the floor
any Python-over-CSV pipeline pays. Each contender runs as its own subprocess so its peak RSS
(``ru_maxrss`` from ``os.wait4``) is its own, not the harness's. The KPI tables of kpipe and pandas
are compared item by item: a fast wrong answer is a failure, printed loudly, exit status 1.

Usage (see bench/README.md):
    .venv/bin/python bench/run.py                 # 400k orders (~1.3M rows, ~10k products)
    .venv/bin/python bench/run.py --orders 50000  # quicker
    .venv/bin/python bench/run.py --scale         # also a ~5M-row batch, reporting RSS growth
    .venv/bin/python bench/run.py --repeat 3      # three rounds, medians (the machine's noise is 10-40%)
    .venv/bin/python bench/run.py --days 1826     # orders over five years: a partition file per day and dataset
    .venv/bin/python bench/run.py --files 40      # 40 small files a dataset (--files 1: one big file each)
    .venv/bin/python bench/run.py --json          # machine-readable result on stdout
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SCALE_ORDERS = 1_500_000  # ~4.8M rows (+37.5k products): the "5M-row" point
DAYS = 30  # the generator's default span of a batch
FILES = 3  # files per dataset of a generated batch (the generator's default)
KEYS = {"OrderKPI": ("order_date",), "CategoryKPI": ("category", "order_date")}
METRICS = {
    "OrderKPI": ("total_orders", "total_revenue", "total_items_sold", "return_rate", "unique_customers"),
    "CategoryKPI": ("daily_revenue", "avg_order_value", "avg_return_rate"),
}
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Run:
    name: str
    cmd: list[str]
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0  # ru_maxrss: the largest single process of the tree
    tree_rss_mib: float = 0.0  # sampled sum over the process tree (matters once there are workers)
    exit_code: int = 0
    rows: int = 0
    rows_per_s: float = 0.0
    out: str = ""
    stderr_tail: str = field(default="", repr=False)


# ---------------------------------------------------------------- data


def _generator_fingerprint() -> str:
    """Cached data is reused only while the generator's source is unchanged."""
    return hashlib.sha256((ROOT / "kpipe" / "generate.py").read_bytes()).hexdigest()[:12]


def ensure_batch(
    orders: int, seed: int, data_dir: Path, log: Any, invalid: float = 0.0, days: int = DAYS, files: int = FILES
) -> tuple[Path, int, float | None]:
    """(batch dir, data rows, generation seconds or None when cached) for ``orders`` orders.

    Generation runs in a child process: a child's ``ru_maxrss`` starts from its parent's high-water mark
    (Linux records the pre-exec image's peak), so the harness must stay small for the numbers to be true.
    """
    kind = f"orders-{orders}-seed-{seed}" + (f"-invalid-{invalid:g}" if invalid else "") + (f"-days-{days}" if days != DAYS else "")
    kind += f"-files-{files}" if files != FILES else ""
    root = data_dir / f"{kind}-{_generator_fingerprint()}"
    marker = root / "meta.json"
    if not marker.is_file():
        for stale in data_dir.glob(f"{kind}-*"):  # from an older generator: ~100 MB each
            shutil.rmtree(stale, ignore_errors=True)
        log(f"generating {orders:,} orders into {root} ...")
        subprocess.run([sys.executable, __file__, "--generate-into", str(root), "--orders", str(orders),
                        "--seed", str(seed), "--invalid-fraction", str(invalid), "--days", str(days), "--files", str(files)],
                       check=True, cwd=ROOT)
        meta = json.loads(marker.read_text())
        log(f"  {meta['rows']:,} rows in {meta['generate_s']:.1f} s ({meta['rows'] / meta['generate_s']:,.0f} rows/s)")
        return root / "batch-1", int(meta["rows"]), float(meta["generate_s"])
    meta = json.loads(marker.read_text())
    return root / "batch-1", int(meta["rows"]), None


def generate_into(root: Path, orders: int, seed: int, invalid: float = 0.0, days: int = DAYS, files: int = FILES) -> None:
    """The child side of ensure_batch: generate, count rows, then write the marker last."""
    sys.path.insert(0, str(ROOT))
    from kpipe.generate import generate_batches

    t0 = time.perf_counter()
    [batch] = generate_batches(root, orders, seed=seed, invalid_fraction=invalid, days=days, files_per_dataset=files)
    secs = time.perf_counter() - t0
    rows = count_rows(batch)
    (root / "meta.json").write_text(json.dumps({"orders": orders, "seed": seed, "rows": rows, "generate_s": secs}))


def count_rows(batch: Path) -> int:
    n = 0
    for p in [batch / "products.csv", *sorted(batch.glob("orders/*.csv")), *sorted(batch.glob("order_items/*.csv"))]:
        with p.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            n += max(0, sum(1 for _ in csv.reader(fh)) - 1)
    return n


# ---------------------------------------------------------------- measuring


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE
    except OSError:
        return 0


def _descendants_rss(root_pid: int) -> int:
    """Bytes of RSS summed over all descendants of ``root_pid`` (not itself), from /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(e))
    total, todo = 0, list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        total += _rss(pid)
        todo.extend(children.get(pid, []))
    return total


# The contender is spawned by this tiny launcher, which reports (exit code, wall s, ru_maxrss KiB) from its
# own os.wait4. Why not wait4 from the harness directly: on Linux a child's ru_maxrss starts at the
# high-water mark of the image it exec'd over (its parent's, under vfork), so every contender would carry
# the harness's own 20+ MiB. A fresh ``python -S -I`` launcher that spawns the contender brings that floor
# down to its own ~8 MiB (measured and printed by ``launcher_floor_mib``).
LAUNCHER = (
    "import os,sys,time\n"
    "t=time.perf_counter()\n"
    "pid=os.posix_spawnp(sys.argv[2],sys.argv[2:],os.environ)\n"
    "_,st,ru=os.wait4(pid,0)\n"
    "w=time.perf_counter()-t\n"
    "f=open(sys.argv[1],'w');f.write('%d %r %d'%(os.waitstatus_to_exitcode(st),w,ru.ru_maxrss));f.close()\n"
)


def _launch(cmd: list[str], stdout: Any, stderr: Any, sample_into: list[int] | None = None) -> tuple[int, float, int]:
    """Run ``cmd`` under the launcher; (exit code, wall seconds, peak RSS KiB); optionally sample tree RSS."""
    with tempfile.TemporaryDirectory(prefix="kpipe-bench-") as tmp:
        res = Path(tmp) / "result"
        launcher = subprocess.Popen([sys.executable, "-S", "-I", "-c", LAUNCHER, str(res), *cmd],
                                    stdout=stdout, stderr=stderr, cwd=ROOT)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                sample_into.append(_descendants_rss(launcher.pid))  # type: ignore[union-attr]

        sampler = threading.Thread(target=sample, daemon=True)
        if sample_into is not None:
            sampler.start()
        launcher.wait()
        done.set()
        if sample_into is not None:
            sampler.join()
        if launcher.returncode != 0 or not res.is_file():
            return launcher.returncode or 1, 0.0, 0
        code, wall, maxrss = res.read_text().split()
        return int(code), float(wall), int(maxrss)


def launcher_floor_mib() -> float:
    """ru_maxrss the launcher reports for ``true``: the floor under every peak RSS in the table."""
    return _launch(["true"], subprocess.DEVNULL, subprocess.DEVNULL)[2] / 1024


def measure(run: Run, rows: int, log: Any) -> Run:
    """Run ``run.cmd`` as a child of the launcher; wall time and peak RSS come from the launcher's wait4."""
    log(f"running {run.name}: {' '.join(run.cmd)}")
    samples: list[int] = []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        run.exit_code, run.wall_s, maxrss_kib = _launch(run.cmd, out, err, samples)
        err.seek(0)
        run.stderr_tail = err.read()[-2000:].decode("utf-8", "replace")
    run.peak_rss_mib = maxrss_kib / 1024
    run.tree_rss_mib = max(samples, default=0) / 2**20
    run.rows = rows
    run.rows_per_s = rows / run.wall_s if run.wall_s else 0.0
    if run.exit_code != 0:
        log(f"  !! {run.name} exited {run.exit_code}:\n{run.stderr_tail}")
    else:
        log(f"  {run.wall_s:.2f} s, peak RSS {run.peak_rss_mib:.0f} MiB")
    return run


# ---------------------------------------------------------------- contenders


def kpipe_command() -> list[str]:
    script = Path(sys.executable).parent / "kpipe"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kpipe.cli"]


def kpipe_accepts_workers() -> tuple[bool, str]:
    """Whether ``kpipe process`` has ``--workers`` (it is optional), from its --help at run time."""
    proc = subprocess.run([*kpipe_command(), "process", "--help"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return False, f"`kpipe process --help` failed: {proc.stderr.strip()[-300:]}"
    return "--workers" in proc.stdout, ""


def contenders(batch: Path, work: Path, log: Any) -> tuple[list[Run], list[str]]:
    notes: list[str] = []
    runs: list[Run] = []
    has_workers, problem = kpipe_accepts_workers()
    if problem:
        notes.append(f"kpipe skipped: {problem}")
    elif has_workers:
        for w in (1, 2):
            out = work / f"kpipe-w{w}"
            runs.append(Run(f"kpipe process --workers {w}",
                            [*kpipe_command(), "process", str(batch), "--out", str(out), "--workers", str(w)],
                            out=str(out)))
    else:
        notes.append("`kpipe process` has no --workers option: ran it once without, skipped the --workers 1/2 variants")
        out = work / "kpipe"
        runs.append(Run("kpipe process", [*kpipe_command(), "process", str(batch), "--out", str(out)], out=str(out)))
    # the whole event-driven path on the embedded emulator (moto keeps the bucket in memory, so its
    # RSS is the emulator's, not the engine's): S3 events, Step Functions, the ECS tasks, the fan-out
    out = work / "kpipe-run"
    runs.append(Run("kpipe run (emulator, end to end)", [*kpipe_command(), "run", str(batch), "--out", str(out)],
                    out=str(out)))
    out = work / "pandas"
    runs.append(Run("pandas baseline", [sys.executable, str(BENCH / "pandas_baseline.py"), str(batch), "--out", str(out)],
                    out=str(out)))
    out = work / "bare"
    runs.append(Run("bare csv", [sys.executable, str(BENCH / "bare_csv.py"), str(batch), str(out)], out=str(out)))
    for n in notes:
        log(f"NOTE: {n}")
    return runs, notes


# ---------------------------------------------------------------- comparing KPI tables


def load_table(out: Path, table: str) -> dict[tuple[str, ...], dict[str, Decimal]]:
    items = json.loads((out / f"{table}.json").read_text(encoding="utf-8"), parse_float=Decimal, parse_int=Decimal)
    return {tuple(str(it[k]) for k in KEYS[table]): {m: it.get(m) for m in METRICS[table]} for it in items}


def compare(kpipe_out: Path, pandas_out: Path) -> list[str]:
    """Human-readable differences between two KPI outputs (empty: identical values)."""
    diffs: list[str] = []
    for table in KEYS:
        try:
            a, b = load_table(kpipe_out, table), load_table(pandas_out, table)
        except (OSError, ValueError, KeyError) as exc:
            diffs.append(f"{table}: cannot load ({exc!r})")
            continue
        for key in sorted(set(a) | set(b)):
            if key not in a:
                diffs.append(f"{table}{key}: missing in kpipe")
            elif key not in b:
                diffs.append(f"{table}{key}: missing in pandas")
            else:
                for m in METRICS[table]:
                    if a[key][m] != b[key][m]:
                        diffs.append(f"{table}{key}.{m}: kpipe {a[key][m]} != pandas {b[key][m]}")
    try:  # the validation counts too: same KPIs from different rows would be luck, not agreement
        ka = json.loads((kpipe_out / "report.json").read_text(encoding="utf-8"))["batches"][0]["datasets"]
        pa = json.loads((pandas_out / "report.json").read_text(encoding="utf-8"))["batches"][0]["datasets"]
        for ds, counts in pa.items():
            got = {k: ka.get(ds, {}).get(k) for k in counts}
            if got != counts:
                diffs.append(f"report.{ds}: kpipe {got} != pandas {counts}")
    except (OSError, ValueError, KeyError, IndexError) as exc:
        diffs.append(f"report.json: cannot compare ({exc!r})")
    return diffs


# ---------------------------------------------------------------- reporting


def table(runs: list[Run]) -> str:
    pandas = next((r for r in runs if r.name == "pandas baseline" and r.exit_code == 0), None)
    bare = next((r for r in runs if r.name == "bare csv" and r.exit_code == 0), None)
    head = (f"{'contender':<33} {'rows/s':>11} {'wall s':>8} {'peak RSS MiB':>13} {'tree RSS MiB':>13} "
            f"{'wall/pandas':>12} {'RSS/pandas':>11} {'wall/bare':>10} {'RSS/bare':>9}")
    lines = [head, "-" * len(head)]
    for r in runs:
        if r.exit_code != 0:
            lines.append(f"{r.name:<33} FAILED (exit {r.exit_code})")
            continue

        def ratio(x: float, base: Run | None, attr: str) -> str:
            return f"{x / getattr(base, attr):.2f}x" if base and getattr(base, attr) else "-"

        lines.append(
            f"{r.name:<33} {r.rows_per_s:>11,.0f} {r.wall_s:>8.2f} {r.peak_rss_mib:>13.0f} {r.tree_rss_mib:>13.0f} "
            f"{ratio(r.wall_s, pandas, 'wall_s'):>12} {ratio(r.peak_rss_mib, pandas, 'peak_rss_mib'):>11} "
            f"{ratio(r.wall_s, bare, 'wall_s'):>10} {ratio(r.peak_rss_mib, bare, 'peak_rss_mib'):>9}"
        )
    return "\n".join(lines)


def bench_once(
    orders: int,
    seed: int,
    data_dir: Path,
    keep: Path | None,
    log: Any,
    repeat: int = 1,
    invalid: float = 0.0,
    days: int = DAYS,
    files: int = FILES,
) -> dict[str, Any]:
    """Every contender `repeat` times, round-robin (so a slow spell of the machine hits them all
    alike); each contender's wall time is its median, its RSS the highest seen."""
    batch, rows, gen_s = ensure_batch(orders, seed, data_dir, log, invalid, days, files)
    load_before = os.getloadavg()[0]  # other work on the machine skews wall times: say how busy it was
    work = Path(tempfile.mkdtemp(prefix="kpipe-bench-", dir=keep))
    try:
        rounds = []
        for k in range(max(repeat, 1)):
            if repeat > 1:
                log(f"-- round {k + 1} of {repeat}")
            (work / f"round-{k}").mkdir()
            runs, notes = contenders(batch, work / f"round-{k}", log)
            for r in runs:
                measure(r, rows, log)
            rounds.append(runs)
        runs = [_combine(same) for same in zip(*rounds, strict=True)]
        mismatches: dict[str, list[str]] = {}
        pandas = next(r for r in runs if r.name == "pandas baseline")
        for r in runs:
            if r.name.startswith("kpipe") and r.exit_code == 0 and pandas.exit_code == 0:
                mismatches[r.name] = compare(Path(r.out), Path(pandas.out))
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return {"orders": orders, "rows": rows, "invalid_fraction": invalid, "days": days, "files": files, "batch": str(batch), "generate_s": gen_s, "notes": notes,
            "runs": runs, "mismatches": mismatches, "load": [load_before, os.getloadavg()[0]]}


def _combine(same: tuple[Run, ...]) -> Run:
    """One contender's rounds as one row: median wall time, highest RSS, the last round's output."""
    last = same[-1]
    ok = [r for r in same if r.exit_code == 0]
    if len(ok) != len(same):
        return next(r for r in same if r.exit_code != 0)
    walls = sorted(r.wall_s for r in ok)
    last.wall_s = walls[len(walls) // 2] if len(walls) % 2 else (walls[len(walls) // 2 - 1] + walls[len(walls) // 2]) / 2
    last.rows_per_s = last.rows / last.wall_s if last.wall_s else 0.0
    last.peak_rss_mib = max(r.peak_rss_mib for r in ok)
    last.tree_rss_mib = max(r.tree_rss_mib for r in ok)
    return last


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="kpipe vs pandas vs bare csv on a generated batch")
    ap.add_argument("--orders", type=int, default=400_000, help="orders in the batch (default 400000, ~1.3M rows)")
    ap.add_argument("--scale", action="store_true", help=f"also run {SCALE_ORDERS:,} orders (~5M rows): RSS growth")
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout (progress on stderr)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--invalid-fraction", type=float, default=0.0,
                    help="share of invalid rows in the generated batch, CSV quirks included (default 0: all valid)")
    ap.add_argument("--days", type=int, default=DAYS,
                    help=f"days the orders of the batch spread over (default {DAYS}; 1826 for five years: a partition file per day)")
    ap.add_argument("--files", type=int, default=FILES,
                    help=f"files per dataset (default {FILES}; 40 for many small files, 1 for one big file each)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every contender; medians are reported (default 1)")
    ap.add_argument("--data-dir", type=Path, default=BENCH / "data", help="cache of generated batches")
    ap.add_argument("--keep", type=Path, default=None, help="keep each contender's OUT under this directory")
    ap.add_argument("--generate-into", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.generate_into:
        generate_into(args.generate_into, args.orders, args.seed, args.invalid_fraction, args.days, args.files)
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    floor = launcher_floor_mib()
    sizes = [args.orders] + ([SCALE_ORDERS] if args.scale and args.orders != SCALE_ORDERS else [])
    results = [
        bench_once(n, args.seed, args.data_dir, args.keep, log, args.repeat, args.invalid_fraction, args.days, args.files) for n in sizes
    ]

    failed = False
    for res in results:
        for name, diffs in res["mismatches"].items():
            if diffs:
                failed = True
                log("\n" + "!" * 78 + f"\n!! KPI MISMATCH: {name} vs pandas baseline: {len(diffs)} difference(s)\n"
                    + "\n".join(f"!!   {d}" for d in diffs[:20]) + "\n" + "!" * 78)
        failed |= any(r.exit_code != 0 for r in res["runs"])

    growth: dict[str, float] = {}
    if len(results) == 2:
        small = {r.name: r for r in results[0]["runs"] if r.exit_code == 0}
        for r in results[1]["runs"]:
            if r.exit_code == 0 and r.name in small and small[r.name].peak_rss_mib:
                growth[r.name] = r.peak_rss_mib / small[r.name].peak_rss_mib

    if args.json:
        doc = {
            "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "results": [{**{k: v for k, v in res.items() if k != "runs"},
                         "runs": [{k: v for k, v in asdict(r).items() if k not in ("stderr_tail", "out")}
                                  for r in res["runs"]]} for res in results],
            "rss_growth": growth, "launcher_floor_mib": floor, "ok": not failed,
        }
        print(json.dumps(doc, indent=1))
    else:
        for res in results:
            gen = f", generated in {res['generate_s']:.1f} s" if res["generate_s"] else " (cached)"
            rounds = f"; median of {args.repeat} rounds" if args.repeat > 1 else ""
            invalid = f" ({res['invalid_fraction']:.0%} invalid, CSV quirks)" if res["invalid_fraction"] else ""
            invalid += f" over {res['days']:,} days" if res["days"] != DAYS else ""
            invalid += f" in {res['files']} files a dataset" if res["files"] != FILES else ""
            print(f"\n== {res['orders']:,} orders, {res['rows']:,} rows{invalid}{gen}; {os.cpu_count()} CPUs, "
                  f"load average before/after {res['load'][0]:.1f}/{res['load'][1]:.1f}{rounds} ==")
            print(table(res["runs"]))
            for name, diffs in res["mismatches"].items():
                print(f"KPI tables {name} vs pandas: {'IDENTICAL' if not diffs else f'{len(diffs)} MISMATCHES'}")
            for n in res["notes"]:
                print(f"note: {n}")
            print(f"note: peak RSS = ru_maxrss from wait4 (largest single process; includes a {floor:.0f} MiB launcher "
                  "floor); tree RSS = sum over the contender's processes, sampled every 50 ms (matters with workers)")
        if growth:
            r0, r1 = results[0]["rows"], results[1]["rows"]
            print(f"\n== peak RSS growth from {r0:,} to {r1:,} rows ({r1 / r0:.1f}x the rows) ==")
            for name, g in growth.items():
                print(f"{name:<28} {g:.2f}x")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
