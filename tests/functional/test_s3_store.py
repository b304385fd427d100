"""The transform gives the same KPIs on the S3-backed store (moto) as on a local directory, across
several batches including corrections, and a retried transform changes nothing."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from chalicelib.config import PipelineConfig, default_config_path, load_config
from kpipe.engine.store import LocalStore, S3Store
from kpipe.engine.transform import transform_batch
from kpipe.engine.validate import validate_batch
from kpipe.generate import generate_batches


@pytest.fixture(scope="module")
def cfg() -> PipelineConfig:
    return load_config(default_config_path())


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("s3store-batches")
    return generate_batches(root, 300, batches=3, invalid_fraction=0.05, seed=11)


def _run(cfg: PipelineConfig, batches: list[Path], store: object, work: Path, retry_last: bool = False) -> dict:
    tables: dict = {}
    for i, batch in enumerate(batches):
        validated = work / f"v{i}"
        validate_batch(cfg, batch, validated, f"b-{i}")
        attempts = 2 if retry_last and i == len(batches) - 1 else 1
        for attempt in range(attempts):
            result = transform_batch(cfg, f"b-{i}", validated / "validated", store, work / f"t{i}-{attempt}")  # type: ignore[arg-type]
        for name, by_date in result.tables.items():
            table = tables.setdefault(name, {})
            for date, items in by_date.items():
                table[date] = items
    return tables


def test_s3_store_equals_local_store(cfg: PipelineConfig, batches: list[Path], tmp_path: Path) -> None:
    local = _run(cfg, batches, LocalStore(tmp_path / "local"), tmp_path / "lw")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="kpipe-test")
        remote = _run(cfg, batches, S3Store(s3, "kpipe-test", "processed/"), tmp_path / "sw", retry_last=True)
        names = S3Store(s3, "kpipe-test", "processed/").list("orders/")
    assert remote == local
    assert any(n.startswith("orders/order_date=") for n in names)
    assert sum(len(items) for items in local["OrderKPI"].values()) > 0


def test_fetch_is_byte_exact_and_a_missing_name_leaves_nothing(tmp_path: Path) -> None:
    body = b"order_id,order_date\r\n" + b"".join(b"%d,2025-03-01\r\n" % i for i in range(200_000))  # several chunks
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="kpipe-test")
        s3.put_object(Bucket="kpipe-test", Key="processed/orders/a.csv", Body=body)
        store = S3Store(s3, "kpipe-test", "processed/")
        assert store.fetch("orders/a.csv", tmp_path / "got" / "a.csv") is True
        assert store.fetch("orders/missing.csv", tmp_path / "got" / "missing.csv") is False
    assert (tmp_path / "got" / "a.csv").read_bytes() == body
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["a.csv"]  # no partial or temporary file


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_publish_list_delete(tmp_path: Path, kind: str) -> None:
    """The store seam the merge uses: published names are listed, a deleted one is gone (and a local
    partition folder left empty with it), deleting a name that is not there is no error."""
    src = tmp_path / "src.parquet"
    src.write_bytes(b"PAR1")
    names = [f"orders/order_date=2025-03-0{d}/data.parquet" for d in (1, 2)]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="kpipe-test")
        store = LocalStore(tmp_path / "store") if kind == "local" else S3Store(s3, "kpipe-test", "processed/")
        for name in names:
            store.publish(name, src)
        assert store.list("orders/") == names
        store.delete(names[0])
        store.delete("orders/order_date=2025-03-09/data.parquet")
        assert store.list("orders/") == names[1:]
    if kind == "local":
        assert not (tmp_path / "store" / "orders" / "order_date=2025-03-01").exists()
