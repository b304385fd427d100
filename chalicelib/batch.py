"""Batch identity, pure: is what sits under `raw-data/` a complete batch, what exactly is in it, what is it called.

Why a content-derived id: S3 delivers events at least once, possibly many times, to concurrent Lambda
invocations. If every invocation that sees the same objects derives the same name, Step Functions'
unique execution names do the de-duplication for us: one batch, one execution, no lock in the Lambda.
The id covers each object's key, ETag *and version id*, so re-uploading identical bytes (a new version)
is a new batch rather than a silently swallowed duplicate, and one more file is a new id as well.

No boto3 here: the trigger lists the bucket and hands this module plain records.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from chalicelib.layout import Layout

__all__ = [
    "BATCH_ID_RE",
    "BatchPlan",
    "ManifestEntry",
    "S3Object",
    "batch_id",
    "build_manifest",
    "canonical_json",
    "group_by_dataset",
    "manifest_document",
    "missing_parts",
    "plan_batch",
]

# "b-" + 20 lowercase hex digits: valid as a Step Functions execution name (<= 80 chars of [A-Za-z0-9-_])
# and as an S3 key segment; a rerun appends "-r<N>".
BATCH_ID_RE = re.compile(r"^b-[0-9a-f]{20}$")
_ID_HEX_CHARS = 20


@dataclass(frozen=True)
class S3Object:
    """One present object as listed: the current version of `key`."""

    key: str
    etag: str
    version_id: str | None
    size: int

    @classmethod
    def from_listing(cls, item: Mapping[str, Any]) -> S3Object:
        """From a ListObjectVersions `Versions` entry or a ListObjectsV2 `Contents` entry.

        ETags are stored without their quotes and the unversioned "null" version id becomes None, so the
        same object gets the same identity whichever listing call produced it."""
        version = item.get("VersionId")
        return cls(
            key=item["Key"],
            etag=str(item.get("ETag", "")).strip('"'),
            version_id=None if version in (None, "", "null") else str(version),
            size=int(item.get("Size", 0)),
        )


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    dataset: str
    etag: str
    version_id: str | None
    size: int

    def identity(self) -> dict[str, Any]:
        """What the batch id is computed from (size and dataset follow from these, so they add nothing)."""
        return {"key": self.key, "etag": self.etag, "version_id": self.version_id}


@dataclass(frozen=True)
class BatchPlan:
    """What the trigger decided about the present objects."""

    complete: bool
    missing: list[str]
    manifest: list[ManifestEntry]
    excluded: list[str] = field(default_factory=list)

    @property
    def batch_id(self) -> str:
        if not self.complete:
            raise ValueError(f"an incomplete batch has no id; missing: {self.missing}")
        return batch_id(self.manifest)


def group_by_dataset(objects: Iterable[S3Object], layout: Layout) -> tuple[dict[str, list[S3Object]], list[str]]:
    """Split listed objects by dataset; keys that belong to no dataset (e.g. `raw-data/notes.txt`,
    `raw-data/orders/old/x.csv`) are returned separately, sorted, so they can be reported and never enter a batch."""
    by_dataset: dict[str, list[S3Object]] = {name: [] for name, _ in layout.dataset_globs}
    excluded: list[str] = []
    for obj in objects:
        name = layout.dataset_of(obj.key)
        if name is None:
            excluded.append(obj.key)
        else:
            by_dataset[name].append(obj)
    for objs in by_dataset.values():
        objs.sort(key=lambda o: o.key)
    return by_dataset, sorted(excluded)


def missing_parts(keys_by_dataset: Mapping[str, Sequence[Any]], layout: Layout) -> list[str]:
    """Every dataset of the config needs at least one object; say which ones have none, and where they go.

    >>> from chalicelib.config import Storage
    >>> lay = Layout(Storage(), (("products", "products.csv"), ("orders", "orders/*.csv")))
    >>> missing_parts({"products": ["raw-data/products.csv"]}, lay)
    ['orders (raw-data/orders/*.csv)']
    """
    return [
        f"{name} ({layout.raw_prefix}{pattern})"
        for name, pattern in layout.dataset_globs
        if not keys_by_dataset.get(name)
    ]


def build_manifest(by_dataset: Mapping[str, Sequence[S3Object]], layout: Layout) -> list[ManifestEntry]:
    """The manifest: every grouped object, sorted by key (the order the engine reads files in, too)."""
    entries = [
        ManifestEntry(obj.key, name, obj.etag, obj.version_id, obj.size)
        for name, objs in by_dataset.items()
        for obj in objs
    ]
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice in the listing; list only the current version of each key")
    return sorted(entries, key=lambda e: e.key)


def canonical_json(manifest: Sequence[ManifestEntry]) -> bytes:
    """Byte-stable JSON of the manifest's identities: sorted keys, no whitespace, UTF-8."""
    ordered = sorted((e.identity() for e in manifest), key=lambda d: d["key"])
    return json.dumps(ordered, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def batch_id(manifest: Sequence[ManifestEntry]) -> str:
    """`"b-" + sha256(canonical manifest json)[:20]`: 80 bits, collision-free for any realistic number of batches.

    Independent of the order of `manifest`, so concurrent listings that see the same objects agree."""
    if not manifest:
        raise ValueError("an empty manifest has no batch id")
    return "b-" + hashlib.sha256(canonical_json(manifest)).hexdigest()[:_ID_HEX_CHARS]


def plan_batch(objects: Iterable[S3Object], layout: Layout) -> BatchPlan:
    """Decide on a listing: complete or not (and what is missing), the manifest, the excluded keys."""
    by_dataset, excluded = group_by_dataset(objects, layout)
    missing = missing_parts(by_dataset, layout)
    manifest = build_manifest(by_dataset, layout) if not missing else []
    return BatchPlan(complete=not missing, missing=missing, manifest=manifest, excluded=excluded)


def manifest_document(
    batch: str,
    manifest: Sequence[ManifestEntry],
    *,
    bucket: str,
    layout: Layout,
    excluded: Sequence[str] = (),
    attempt: int = 0,
) -> dict[str, Any]:
    """The JSON written to `reports/<batch_id>/manifest.json`.

    Deterministic (no timestamps) so that concurrent invocations writing it for the same batch write the
    same bytes. `attempt` > 0 marks a rerun, whose objects are what was present at rerun time."""
    return {
        "batch_id": batch,
        "attempt": attempt,
        "bucket": bucket,
        "raw_prefix": layout.raw_prefix,
        "objects": [asdict(e) for e in manifest],
        "excluded": list(excluded),
    }
