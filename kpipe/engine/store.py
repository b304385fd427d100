"""Where the processed store's files live: a local directory or an S3 prefix, behind one small seam.

The transform only ever fetches a file to a local path, lists names under a prefix, publishes a
local file under a name and deletes a name, so the same code runs in `kpipe process` (a folder) and
in the Fargate task (S3, handed its boto3 client), and the engine stays free of boto3.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any, Protocol

TRANSFER_THREADS = 8  # requests in flight when many files move to or from S3 (boto3 clients are thread-safe)


class ProcessedStore(Protocol):
    def fetch(self, name: str, dest: Path) -> bool:
        """Copy `name` to `dest`; False when it does not exist."""

    def list(self, prefix: str) -> list[str]:
        """Names starting with `prefix`, sorted."""

    def publish(self, name: str, src: Path, move: bool = False) -> Path:
        """Store the local file `src` as `name`, replacing any earlier version atomically (`move`:
        `src` is scratch its writer is done with, and may be taken). Returns where a local copy of
        it now is."""

    def delete(self, name: str) -> None:
        """Remove `name` (nothing when it is not there)."""


class LocalStore:
    """A directory. Publishing is rename-atomic, so a crash never leaves a half-written file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def fetch(self, name: str, dest: Path) -> bool:
        src = self.root / name
        if not src.is_file():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return True

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.exists():
            return []
        names = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(n for n in names if n.startswith(prefix) and not n.endswith(".tmp"))

    def publish(self, name: str, src: Path, move: bool = False) -> Path:
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                Path(src).replace(dest)  # same filesystem: a rename, no second copy of the rows
                return dest
            except OSError:
                pass
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
        return dest

    def delete(self, name: str) -> None:
        path = self.root / name
        path.unlink(missing_ok=True)
        for parent in path.parents:  # a partition folder left empty goes too
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            if parent.exists():
                if any(parent.iterdir()):
                    break
                parent.rmdir()


class S3Store:
    """An S3 prefix, handed its boto3 client (moto in tests and locally, real S3 on AWS)."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix

    def fetch(self, name: str, dest: Path) -> bool:
        """One GET streamed to a temporary name, then renamed: `dest` exists only when complete
        (`download_file`'s managed transfer cost 2.5x the GET on the small files a date holds)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
        except Exception as exc:  # botocore raises ClientError NoSuchKey for a missing key
            if _is_missing(exc):
                return False
            raise
        tmp = dest.with_name(f"{dest.name}.{threading.get_ident()}.part")
        try:
            with body, open(tmp, "wb") as fh:
                for chunk in body.iter_chunks(1 << 20):
                    fh.write(chunk)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def list(self, prefix: str) -> list[str]:
        names: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            names.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        return sorted(names)

    def publish(self, name: str, src: Path, move: bool = False) -> Path:
        self.s3.upload_file(str(src), self.bucket, self.prefix + name)
        return src

    def delete(self, name: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + name)


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")
