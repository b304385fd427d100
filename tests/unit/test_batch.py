"""Batch identity (pure): presence check, manifest, deterministic id, exclusion of non-batch keys."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from chalicelib.batch import (
    BATCH_ID_RE,
    S3Object,
    batch_id,
    build_manifest,
    canonical_json,
    group_by_dataset,
    manifest_document,
    missing_parts,
    plan_batch,
)
from chalicelib.config import Storage, default_config_path, load_config
from chalicelib.layout import Layout


@pytest.fixture(scope="module")
def layout() -> Layout:
    return Layout.from_config(load_config(default_config_path()))


def obj(key: str, etag: str = "e1", version: str | None = "v1", size: int = 10) -> S3Object:
    return S3Object(key=key, etag=etag, version_id=version, size=size)


COMPLETE = [
    obj("raw-data/products.csv", "p"),
    obj("raw-data/orders/a.csv", "o1"),
    obj("raw-data/orders/b.csv", "o2"),
    obj("raw-data/order_items/a.csv", "i1"),
]


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ([], ["products", "orders", "order_items"]),
        (["raw-data/products.csv"], ["orders", "order_items"]),
        (["raw-data/products.csv", "raw-data/orders/a.csv"], ["order_items"]),
        (["raw-data/orders/a.csv", "raw-data/order_items/a.csv"], ["products"]),
        (["raw-data/products.csv", "raw-data/orders/a.csv", "raw-data/order_items/x.csv"], []),
        # nested keys and other extensions do not count for a dataset
        (["raw-data/products.csv", "raw-data/orders/old/a.csv", "raw-data/order_items/a.txt"], ["orders", "order_items"]),
    ],
)
def test_missing_parts_names_every_absent_dataset_and_where_it_goes(
    layout: Layout, present: list[str], missing: list[str]
) -> None:
    by_dataset, _ = group_by_dataset([obj(k) for k in present], layout)
    got = missing_parts(by_dataset, layout)
    assert [m.split(" ")[0] for m in got] == missing
    if "orders" in missing:
        assert "orders (raw-data/orders/*.csv)" in got


def test_missing_parts_is_generic_over_the_configs_datasets() -> None:
    lay = Layout(Storage(raw="in/"), (("customers", "customers/*.json"), ("products", "products.csv")))
    assert missing_parts({"products": ["in/products.csv"]}, lay) == ["customers (in/customers/*.json)"]
    assert missing_parts({"products": ["x"], "customers": ["y"]}, lay) == []


def test_non_batch_keys_are_excluded_and_reported(layout: Layout) -> None:
    noise = [
        obj("raw-data/notes.txt"),
        obj("raw-data/orders/old/2024.csv"),
        obj("raw-data/order_items/readme.md"),
        obj("raw-data/products.csv.bak"),
    ]
    plan = plan_batch([*noise, *COMPLETE], layout)
    assert plan.complete
    assert plan.excluded == sorted(o.key for o in noise)
    assert [e.key for e in plan.manifest] == sorted(o.key for o in COMPLETE)
    assert plan.batch_id == plan_batch(COMPLETE, layout).batch_id  # noise never changes the id


def test_manifest_is_sorted_and_carries_dataset_etag_version_size(layout: Layout) -> None:
    shuffled = COMPLETE[:]
    random.Random(7).shuffle(shuffled)
    plan = plan_batch(shuffled, layout)
    assert [(e.key, e.dataset, e.etag, e.version_id, e.size) for e in plan.manifest] == [
        ("raw-data/order_items/a.csv", "order_items", "i1", "v1", 10),
        ("raw-data/orders/a.csv", "orders", "o1", "v1", 10),
        ("raw-data/orders/b.csv", "orders", "o2", "v1", 10),
        ("raw-data/products.csv", "products", "p", "v1", 10),
    ]


def test_batch_id_is_deterministic_and_order_independent(layout: Layout) -> None:
    ids = set()
    for seed in range(10):
        shuffled = COMPLETE[:]
        random.Random(seed).shuffle(shuffled)
        ids.add(plan_batch(shuffled, layout).batch_id)
    assert len(ids) == 1
    (bid,) = ids
    assert BATCH_ID_RE.match(bid)
    assert len(bid) == 22


def test_batch_id_is_sha256_of_the_canonical_identity_json(layout: Layout) -> None:
    import hashlib

    manifest = plan_batch(COMPLETE, layout).manifest
    canonical = canonical_json(manifest)
    assert json.loads(canonical)[0] == {"etag": "i1", "key": "raw-data/order_items/a.csv", "version_id": "v1"}
    assert b" " not in canonical
    assert batch_id(manifest) == "b-" + hashlib.sha256(canonical).hexdigest()[:20]


@pytest.mark.parametrize(
    "change",
    [
        lambda objs: [*objs, obj("raw-data/orders/c.csv", "o3")],  # one more file
        lambda objs: [obj(o.key, o.etag, "v2") if o.key.endswith("products.csv") else o for o in objs],  # re-upload
        lambda objs: [obj(o.key, "changed") if o.key.endswith("b.csv") else o for o in objs],  # new content
        lambda objs: [o for o in objs if not o.key.endswith("b.csv")],  # one file fewer
    ],
)
def test_any_change_in_the_present_objects_is_a_new_id(
    layout: Layout, change: Callable[[list[S3Object]], list[S3Object]]
) -> None:
    before = plan_batch(COMPLETE, layout).batch_id
    after = plan_batch(change(COMPLETE), layout).batch_id
    assert after != before


def test_size_does_not_enter_the_identity(layout: Layout) -> None:
    resized = [obj(o.key, o.etag, o.version_id, size=999) for o in COMPLETE]
    assert plan_batch(resized, layout).batch_id == plan_batch(COMPLETE, layout).batch_id


def test_incomplete_plan_has_no_manifest_and_no_id(layout: Layout) -> None:
    plan = plan_batch(COMPLETE[:2], layout)
    assert not plan.complete
    assert plan.manifest == []
    assert plan.missing == ["order_items (raw-data/order_items/*.csv)"]
    with pytest.raises(ValueError, match="incomplete"):
        _ = plan.batch_id
    with pytest.raises(ValueError, match="empty"):
        batch_id([])


def test_a_key_listed_twice_is_refused(layout: Layout) -> None:
    by_dataset, _ = group_by_dataset([*COMPLETE, obj("raw-data/products.csv", "p", "v0")], layout)
    with pytest.raises(ValueError, match="twice"):
        build_manifest(by_dataset, layout)


def test_s3_object_from_listing_normalises_quotes_and_null_versions() -> None:
    versioned = S3Object.from_listing({"Key": "k", "ETag": '"abc"', "VersionId": "xyz", "Size": 5})
    unversioned = S3Object.from_listing({"Key": "k", "ETag": '"abc"', "VersionId": "null", "Size": 5})
    v2 = S3Object.from_listing({"Key": "k", "ETag": "abc", "Size": 5})
    assert versioned == S3Object("k", "abc", "xyz", 5)
    assert unversioned == v2 == S3Object("k", "abc", None, 5)


def test_manifest_document_is_deterministic_json(layout: Layout) -> None:
    plan = plan_batch([obj("raw-data/x.txt"), *COMPLETE], layout)
    doc = manifest_document(plan.batch_id, plan.manifest, bucket="bkt", layout=layout, excluded=plan.excluded)
    again = manifest_document(plan.batch_id, list(reversed(plan.manifest)), bucket="bkt", layout=layout, excluded=plan.excluded)
    assert doc["batch_id"] == plan.batch_id
    assert doc["attempt"] == 0
    assert doc["raw_prefix"] == "raw-data/"
    assert doc["excluded"] == ["raw-data/x.txt"]
    assert doc["objects"][0] == {
        "key": "raw-data/order_items/a.csv",
        "dataset": "order_items",
        "etag": "i1",
        "version_id": "v1",
        "size": 10,
    }
    assert json.loads(json.dumps(doc)) == doc
    assert {o["key"] for o in again["objects"]} == {o["key"] for o in doc["objects"]}


def test_batch_id_is_a_valid_execution_name_even_with_rerun_suffix(layout: Layout) -> None:
    bid = plan_batch(COMPLETE, layout).batch_id
    name = f"{bid}-r123"
    assert len(name) <= 80
    assert all(c.isalnum() or c in "-_" for c in name)
