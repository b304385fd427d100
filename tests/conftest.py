"""Shared helpers for the engine tests: writing batch directories, the default config, reading KPI output.

Helpers are session-scoped fixtures returning plain functions, so hypothesis tests can use them too
(hypothesis refuses function-scoped fixtures inside `@given`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from chalicelib.config import PipelineConfig, default_config_path, load_config, parse_config
from tests.support import read_kpis

# CI runs a fixed set of examples so that a commit's verdict does not change between runs; laptops keep
# exploring new ones (`HYPOTHESIS_PROFILE=ci` reproduces CI's).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

PRODUCT_COLUMNS = ["id", "sku", "cost", "category", "name", "brand", "retail_price", "department"]
ORDER_COLUMNS = ["order_id", "user_id", "status", "created_at", "returned_at", "shipped_at", "delivered_at",
                 "num_of_item"]
ITEM_COLUMNS = ["id", "order_id", "user_id", "product_id", "status", "created_at", "shipped_at", "delivered_at",
                "returned_at", "sale_price"]

# A file's content: CSV text (written as is), raw bytes, or rows (dicts by header name, or lists).
FileContent = str | bytes | list[Mapping[str, Any]] | list[list[Any]]
DatasetContent = FileContent | Mapping[str, FileContent]


def rows_to_csv(rows: Iterable[Mapping[str, Any]] | Iterable[list[Any]], columns: list[str]) -> str:
    """CSV text with a header: `columns` plus any extra keys the dict rows carry (in first-seen order).
    For order items, `quantity` is added to the header only when some row has it."""
    rows = list(rows)
    header = list(columns)
    for row in rows:
        if isinstance(row, Mapping):
            header.extend(k for k in row if k not in header)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        if isinstance(row, Mapping):
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in header])
        else:
            writer.writerow(row)
    return buf.getvalue()


def _write(path: Path, content: FileContent, columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    else:
        path.write_bytes(rows_to_csv(content, columns).encode("utf-8"))


def _write_dataset(folder: Path, content: DatasetContent, columns: list[str]) -> None:
    files = content if isinstance(content, Mapping) else {"part-1.csv": content}
    for name, file_content in files.items():
        _write(folder / name, file_content, columns)


def write_batch_files(
    batch_dir: Path,
    products: FileContent | None = None,
    orders: DatasetContent | None = None,
    items: DatasetContent | None = None,
) -> Path:
    """Write one batch directory: `products.csv`, `orders/*.csv`, `order_items/*.csv`.

    Each dataset is CSV text, bytes, or a list of rows (dicts keyed by header name: the standard columns
    of docs/semantics.md are the header, extra keys become extra columns). `orders`/`items` may also be
    a mapping `{file name: content}` for several files. None or an empty list writes a header-only file."""
    batch_dir = Path(batch_dir)
    batch_dir.mkdir(parents=True, exist_ok=True)
    _write(batch_dir / "products.csv", [] if products is None else products, PRODUCT_COLUMNS)
    _write_dataset(batch_dir / "orders", [] if orders is None else orders, ORDER_COLUMNS)
    _write_dataset(batch_dir / "order_items", [] if items is None else items, ITEM_COLUMNS)
    return batch_dir


def tables_as_kpis(
    tables: Mapping[str, Mapping[str, list[dict[str, Any]]]],
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
    """`TransformResult.tables` in the same shape as `read_kpis` (items of touched dates only)."""
    orders = {}
    for items in tables.get("OrderKPI", {}).values():
        for item in items:
            rest = dict(item)
            orders[rest.pop("order_date")] = rest
    cats = {}
    for items in tables.get("CategoryKPI", {}).values():
        for item in items:
            rest = dict(item)
            cats[(rest.pop("category"), rest.pop("order_date"))] = rest
    return orders, cats


@pytest.fixture(scope="session")
def config_path() -> Path:
    """The repo's default pipeline.yaml."""
    return default_config_path()


@pytest.fixture(scope="session")
def config_text(config_path: Path) -> str:
    return config_path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def cfg(config_path: Path) -> PipelineConfig:
    """The default pipeline config (frozen, safe to share)."""
    return load_config(config_path)


@pytest.fixture(scope="session")
def config_from() -> Callable[[str], PipelineConfig]:
    """Parse a config from YAML text (a ConfigError shows every problem when a test's YAML is wrong)."""
    return parse_config


@pytest.fixture(scope="session")
def write_batch() -> Callable[..., Path]:
    """`write_batch(dir, products=..., orders=..., items=...)`: see `write_batch_files`."""
    return write_batch_files


@pytest.fixture(scope="session")
def kpis_of() -> Callable[[Path], tuple[dict[str, Any], dict[tuple[str, str], Any]]]:
    """`kpis_of(out)`: the KPI tables `process_batches` left in OUT, keyed like the oracle's result."""
    return read_kpis


@pytest.fixture(scope="session")
def kpis_of_tables() -> Callable[..., tuple[dict[str, Any], dict[tuple[str, str], Any]]]:
    return tables_as_kpis
