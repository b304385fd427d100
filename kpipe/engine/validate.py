"""Validate one batch (ECS task 1's logic): raw CSV files in, valid and rejected rows plus a report out.

Each raw file is streamed once through petl: `fromcsv` reads it (BOM, CRLF, quoting handled by the
csv module), the compiled `FileRules` decide every row, valid rows stream on into `tocsv` and
rejected rows go to the rejected file with their file, line and reasons. Memory holds only the key
tables that uniqueness, references and lookups need, never the rows.

Datasets run in dependency order (a referenced dataset first), so an item is checked against the
orders and products already found valid: a rejected order rejects its items (the cascade).
"""

from __future__ import annotations

import codecs
import csv
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import petl

from chalicelib.config import PipelineConfig
from chalicelib.layout import Layout
from kpipe.engine.keys import KeyTable
from kpipe.engine.rules import BatchRefs, FileRules

REJECT_META = ["_file", "_line", "_reasons"]
CHUNK_ROWS = 8192


def dataset_files(cfg: PipelineConfig, raw_dir: Path) -> dict[str, list[str]]:
    """Relative paths below raw_dir for each dataset, in key (lexicographic) order."""
    layout = Layout.from_config(cfg)
    found: dict[str, list[str]] = {name: [] for name in cfg.datasets}
    if raw_dir.exists():
        for path in raw_dir.rglob("*"):
            if path.is_file():
                rel = path.relative_to(raw_dir).as_posix()
                name = layout.dataset_of(layout.raw_prefix + rel)
                if name is not None:
                    found[name].append(rel)
    return {name: sorted(files) for name, files in found.items()}


def validated_header(cfg: PipelineConfig, dataset: str) -> list[str]:
    return cfg.datasets[dataset].fields()


def validate_batch(cfg: PipelineConfig, raw_dir: Path, out_dir: Path, batch_id: str) -> dict[str, Any]:
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    (out_dir / "validated").mkdir(parents=True, exist_ok=True)
    (out_dir / "rejected").mkdir(parents=True, exist_ok=True)
    files = dataset_files(cfg, raw_dir)
    refs = BatchRefs(cfg)
    report: dict[str, Any] = {
        "batch_id": batch_id,
        "datasets": {},
        "files": {},
        "threshold_exceeded": False,
        "threshold_problems": [],
    }
    for name in cfg.dataset_order():
        stats, per_file = _validate_dataset(cfg, name, raw_dir, files[name], out_dir, refs)
        report["datasets"][name] = stats
        report["files"].update(per_file)
        threshold = cfg.datasets[name].reject_threshold
        if threshold is not None and stats["rows_in"]:
            fraction = stats["rows_rejected"] / stats["rows_in"]
            if fraction > threshold:
                report["threshold_exceeded"] = True
                report["threshold_problems"].append(
                    f"{name}: {stats['rows_rejected']} of {stats['rows_in']} rows rejected "
                    f"({fraction:.2%}) > reject_threshold {threshold}"
                )
    return report


def _validate_dataset(
    cfg: PipelineConfig, name: str, raw_dir: Path, rels: list[str], out_dir: Path, refs: BatchRefs
) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    ds = cfg.datasets[name]
    seen: dict[str, KeyTable] = {}
    valid_keys = KeyTable()
    reasons: Counter[str] = Counter()
    per_file: dict[str, dict[str, int]] = {}
    source_headers = [col.header(col_name) for col_name, col in ds.columns.items()]
    rejected_path = out_dir / "rejected" / f"{name}.csv"
    totals = {"rows_in": 0, "rows_valid": 0, "rows_rejected": 0}

    with open(rejected_path, "w", encoding="utf-8", errors="surrogateescape", newline="") as rej_fh:
        rejected = csv.writer(rej_fh)
        rejected.writerow([*REJECT_META, *source_headers, "_other"])

        declared = set(source_headers)

        def reject(rel: str, line: int, row: Sequence[str], header: Sequence[str], why: list[str], counts: dict[str, int]) -> None:
            counts["rows_rejected"] += 1
            reasons.update(why)
            other = {h: v for h, v in zip(header, row, strict=False) if h.strip() not in declared}
            rejected.writerow(
                [
                    rel,
                    line,
                    ";".join(why),
                    *(row[i] if 0 <= i < len(row) else "" for i in _positions(header, source_headers)),
                    json.dumps(other, ensure_ascii=False) if other else "",
                ]
            )

        def valid_rows() -> Iterator[Sequence[str]]:
            yield validated_header(cfg, name)
            for rel in rels:
                counts = {"rows_in": 0, "rows_valid": 0, "rows_rejected": 0}
                per_file[rel] = counts
                path = raw_dir / rel
                clean = _is_utf8(path)
                table = petl.fromcsv(str(path), encoding="utf-8-sig", errors="surrogateescape")
                rows = iter(table)
                header = next(rows, None)
                if header is None:
                    continue  # an empty file: no header, no rows
                rules = FileRules(cfg, name, header, refs, seen)
                line = 1
                while chunk := list(islice(rows, CHUNK_ROWS)):
                    lines = range(line + 1, line + 1 + len(chunk))
                    line += len(chunk)
                    if () in chunk or not clean:  # blank lines are not rows; undecodable rows are rejected
                        pairs = [(r, ln) for r, ln in zip(chunk, lines, strict=True) if r]
                        bad = [(r, ln) for r, ln in pairs if not clean and _has_bad_bytes(r)]
                        for r, ln in bad:
                            reject(rel, ln, r, header, ["row.encoding"], counts)
                        if bad:
                            pairs = [(r, ln) for r, ln in pairs if clean or not _has_bad_bytes(r)]
                        counts["rows_in"] += len(bad)
                        chunk = [r for r, _ in pairs]
                        lines = [ln for _, ln in pairs]
                    counts["rows_in"] += len(chunk)
                    cols, rejected_rows = rules.apply_chunk(chunk)
                    for i, why in rejected_rows:
                        reject(rel, lines[i], chunk[i], header, why, counts)
                    if not cols or not cols[0]:
                        continue
                    counts["rows_valid"] += len(cols[0])
                    valid_keys.put_many(cols[rules.key_pos], rules.lookup_values(cols))
                    yield from zip(*rules.format_columns(cols), strict=True)

        petl.tocsv(valid_rows(), str(out_dir / "validated" / f"{name}.csv"), encoding="utf-8")

    refs.tables[name] = valid_keys
    for counts in per_file.values():
        for k in totals:
            totals[k] += counts[k]
    return {**totals, "reasons": dict(sorted(reasons.items()))}, per_file


def _positions(header: Sequence[str], names: list[str]) -> list[int]:
    stripped = [h.strip() for h in header]
    return [stripped.index(n) if n in stripped else -1 for n in names]


def _is_utf8(path: Path) -> bool:
    """Most files are clean: decode once up front so the per-row byte check is only paid when needed."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _has_bad_bytes(row: tuple[str, ...]) -> bool:
    return any(any("\udc80" <= ch <= "\udcff" for ch in value) for value in row)
