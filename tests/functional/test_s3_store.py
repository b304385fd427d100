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


def test_prefetched_files_are_read_as_fetched_ones(tmp_path: Path) -> None:
    """Files fetched ahead in threads are what `path` gives (a missing one is None), each fetched
    once; an error of a background fetch reaches the reader."""
    from kpipe.engine.transform import _Cache

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="kpipe-test")
        for i in range(40):
            s3.put_object(Bucket="kpipe-test", Key=f"processed/d/{i}.csv", Body=f"x\r\n{i}\r\n".encode())
        store = S3Store(s3, "kpipe-test", "processed/")
        fetched: list[str] = []
        real_fetch = store.fetch

        def counting_fetch(name: str, dest: Path) -> bool:
            fetched.append(name)
            return real_fetch(name, dest)

        store.fetch = counting_fetch  # type: ignore[method-assign]
        cache = _Cache(store, tmp_path / "cache")
        names = [f"d/{i}.csv" for i in range(40)]
        try:
            cache.prefetch([*names, "d/missing.csv"])
            cache.prefetch(names)  # already under way: not fetched twice
            got = [cache.path(n) for n in names]
            assert cache.path("d/missing.csv") is None
        finally:
            cache.close()
        assert [p.read_bytes() if p else None for p in got] == [f"x\r\n{i}\r\n".encode() for i in range(40)]
        assert sorted(fetched) == sorted([*names, "d/missing.csv"])

        broken = _Cache(S3Store(s3, "no-such-bucket", "processed/"), tmp_path / "broken")
        try:
            broken.prefetch(["d/1.csv"])
            with pytest.raises(Exception, match="NoSuchBucket"):
                broken.path("d/1.csv")
        finally:
            broken.close()


def test_publishing_many_files_puts_each_once_and_raises_a_failed_one(tmp_path: Path) -> None:
    from kpipe.engine.transform import _Cache

    names = [f"orders/order_date=2025-03-{day:02d}/00000001-b-x.csv" for day in range(1, 29)]
    for i, name in enumerate(names):
        (tmp_path / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / name).write_bytes(b"order_id\r\n%d\r\n" % i)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="kpipe-test")
        store = S3Store(s3, "kpipe-test", "processed/")
        cache = _Cache(store, tmp_path / "cache")
        cache.publish_moved(names, tmp_path / "out")
        assert store.list("orders/") == sorted(names)
        assert [s3.get_object(Bucket="kpipe-test", Key="processed/" + n)["Body"].read() for n in names] == [
            b"order_id\r\n%d\r\n" % i for i in range(len(names))
        ]
        assert all((tmp_path / "cache" / n).is_file() for n in names)  # kept as the local copies
        with pytest.raises(FileNotFoundError):
            cache.publish_moved(["orders/order_date=2025-04-01/gone.csv"], tmp_path / "out")
