"""The floor: read every row of a batch with ``csv.reader`` and write it back with ``csv.writer``.

Why it exists: any pipeline over CSV must at least parse and write each row once; this pass does only
that (no rules, no KPIs), so its wall time and memory are what "streaming Python over CSV" costs on this
machine. The benchmark reports kpipe relative to it.

Usage: ``python bench/bare_csv.py BATCH_DIR OUT``; prints ``{"rows": N}`` (data rows, headers excluded).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def batch_files(batch_dir: Path) -> list[Path]:
    """The dataset files of a batch, in the order the pipeline reads them."""
    files = [batch_dir / "products.csv"]
    for dataset in ("orders", "order_items"):
        files += sorted((batch_dir / dataset).glob("*.csv"), key=lambda p: p.name)
    return [p for p in files if p.is_file()]


def copy_rows(batch_dir: Path, out: Path) -> int:
    rows = 0
    for src in batch_files(batch_dir):
        dst = out / src.relative_to(batch_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with (src.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fin,
              dst.open("w", encoding="utf-8", errors="surrogateescape", newline="") as fout):
            reader = csv.reader(fin)
            writer = csv.writer(fout, lineterminator="\n")
            header = next(reader, None)
            if header is None:
                continue
            writer.writerow(header)
            write = writer.writerow
            for row in reader:  # a Python-level loop on purpose: every real pipeline has one per row
                write(row)
                rows += 1
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: bare_csv.py BATCH_DIR OUT", file=sys.stderr)
        return 2
    rows = copy_rows(Path(args[0]), Path(args[1]))
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
