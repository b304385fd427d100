"""boto3 client and resource factories, cached per process, with the retry policy every AWS call shares.

Why a factory and not module-level clients: `app.py` is imported before tests start moto and before the
local emulator sets `AWS_ENDPOINT_URL`, so clients must be created on first use, not at import time.
Why cached: creating a boto3 client costs ~50 ms of Lambda cold-start-like time; one per container is
enough. `reset()` drops the cache so a test (or the emulator) can point everything at a new endpoint.

Why `standard` retries with 10 attempts: throttling (DynamoDB, S3 503 SlowDown, Step Functions) is the
expected transient failure of a bursty pipeline; botocore's standard mode retries those and transient
network errors with jittered exponential backoff, so callers don't hand-roll retry loops.

Clients are thread-safe and shared; boto3 *resources* are not, so they are cached per thread.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
from botocore.config import Config

__all__ = ["RETRY_CONFIG", "client", "default_region", "reset", "resource"]

RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 10})

_lock = threading.Lock()
_clients: dict[tuple[str, str | None, str | None], Any] = {}
_session: boto3.session.Session | None = None
_local = threading.local()
_generation = 0


def default_region() -> str:
    """The region to use: Lambda sets AWS_REGION; locally AWS_DEFAULT_REGION; else us-east-1 (moto's default)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _get_session() -> boto3.session.Session:
    # A private session, not boto3's default one: creating clients from the shared default session is not
    # thread-safe, and other code in the process (tests, the emulator) may use that one concurrently.
    global _session
    if _session is None:
        _session = boto3.session.Session()
    return _session


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or None


def client(service: str) -> Any:
    """A cached boto3 client for `service` (keyed by region and endpoint, so a changed env gets a new one)."""
    region, endpoint = default_region(), _endpoint()
    cache_key = (service, region, endpoint)
    with _lock:
        found = _clients.get(cache_key)
        if found is None:
            found = _get_session().client(service, region_name=region, config=RETRY_CONFIG)
            _clients[cache_key] = found
        return found


def resource(service: str) -> Any:
    """A boto3 resource for `service`, cached per thread (resources are not thread-safe)."""
    region, endpoint = default_region(), _endpoint()
    cache: dict[tuple[str, str | None, str | None], Any] | None = getattr(_local, "resources", None)
    if cache is None or getattr(_local, "generation", -1) != _generation:
        cache = {}
        _local.resources = cache
        _local.generation = _generation
    cache_key = (service, region, endpoint)
    found = cache.get(cache_key)
    if found is None:
        with _lock:
            found = _get_session().resource(service, region_name=region, config=RETRY_CONFIG)
        cache[cache_key] = found
    return found


def reset() -> None:
    """Forget every cached client, resource and session (tests; the emulator after it sets its endpoint)."""
    global _session, _generation
    with _lock:
        _clients.clear()
        _session = None
        _generation += 1
