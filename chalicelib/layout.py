"""Where things live in the pipeline bucket. One place builds every key, so the Lambda, the tasks and
the local emulator can never disagree about the layout (prefixes come from `pipeline.yaml`)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from urllib.parse import unquote_plus

from chalicelib.config import PipelineConfig, Storage


@dataclass(frozen=True)
class Layout:
    storage: Storage
    dataset_globs: tuple[tuple[str, str], ...]  # (dataset, glob below the raw prefix)

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> Layout:
        return cls(cfg.storage, tuple((name, ds.files) for name, ds in cfg.datasets.items()))

    # raw input -------------------------------------------------------------------------------
    @property
    def raw_prefix(self) -> str:
        return self.storage.raw

    def dataset_of(self, key: str) -> str | None:
        """The dataset a raw key belongs to, or None for a key that is not part of a batch.

        `*` does not cross `/`, so `orders/*.csv` never matches `orders/old/x.csv`."""
        if not key.startswith(self.storage.raw):
            return None
        rel = key[len(self.storage.raw) :]
        for name, pattern in self.dataset_globs:
            if _glob_match(rel, pattern):
                return name
        return None

    def relative(self, raw_key: str) -> str:
        return raw_key[len(self.storage.raw) :]

    # per-batch outputs -----------------------------------------------------------------------
    def manifest_key(self, batch_id: str) -> str:
        return f"{self.storage.reports}{batch_id}/manifest.json"

    def snapshot_key(self, batch_id: str) -> str:
        return f"{self.storage.reports}{batch_id}/snapshot.json"

    def transform_plan_key(self, batch_id: str) -> str:
        """Where the index step leaves what the recompute and finish steps need (seq, dates, groups)."""
        return f"{self.storage.reports}{batch_id}/transform-plan.json"

    def report_key(self, batch_id: str) -> str:
        return f"{self.storage.reports}{batch_id}/report.json"

    def validated_key(self, batch_id: str, name: str) -> str:
        """A dataset's valid rows (`<dataset>.parquet`) or the batch's content digest (`batch.json`)."""
        return f"{self.storage.validated}{batch_id}/{name}"

    def rejected_key(self, batch_id: str, dataset: str) -> str:
        return f"{self.storage.rejected}{batch_id}/{dataset}.csv"

    def archived_key(self, batch_id: str, raw_key: str) -> str:
        return f"{self.storage.archived}{batch_id}/{self.relative(raw_key)}"

    def quarantine_key(self, batch_id: str, raw_key: str) -> str:
        return f"{self.storage.quarantine}{batch_id}/{self.relative(raw_key)}"

    @property
    def processed_prefix(self) -> str:
        return self.storage.processed

    @property
    def config_key(self) -> str:
        return f"{self.storage.config}pipeline.yaml"


def _glob_match(rel: str, pattern: str) -> bool:
    rel_parts, pat_parts = rel.split("/"), pattern.split("/")
    return len(rel_parts) == len(pat_parts) and all(
        fnmatch.fnmatchcase(r, p) for r, p in zip(rel_parts, pat_parts, strict=True)
    )


def event_key(raw: str) -> str:
    """S3 event keys arrive URL-encoded (moto encodes even the slashes); always decode."""
    return unquote_plus(raw)
