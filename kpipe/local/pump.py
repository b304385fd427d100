"""The S3 event pump: what Lambda's S3 trigger does on AWS, done locally without Docker.

moto delivers the bucket's ObjectCreated notifications to an SQS queue (resources.notify_queue); the pump
long-polls it and calls the Chalice handler in-process, `app.on_raw_data(event, context)`, with the real
S3 event it received, as Lambda would (keys URL-encoded as S3 sends them; the handler decodes them).
A message is deleted after the handler returns; when the handler raises, it is left for redelivery after
the visibility timeout, as Lambda's retries would do, up to `max_attempts` times.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from chalicelib.obs import get_logger

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class LambdaContext:
    """The few attributes chalice and the handler read from a Lambda context."""

    function_name: str = "kpipe-dev-on_raw_data"
    aws_request_id: str = ""
    memory_limit_in_mb: int = 512

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def chalice_handler() -> Handler:
    """The deployed handler: `app.on_raw_data` from the project's app.py."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    from app import on_raw_data

    return on_raw_data  # type: ignore[no-any-return]


class S3EventPump:
    """Long-poll `queue_url` and hand each S3 event to `handler`. `start()`/`stop()` or a `with`."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        handler: Handler,
        *,
        wait_seconds: int = 1,
        visibility_timeout: int = 5,
        max_attempts: int = 3,
        on_event: Callable[[str, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.sqs, self.queue_url, self.handler = sqs, queue_url, handler
        self.wait_seconds, self.visibility_timeout, self.max_attempts = wait_seconds, visibility_timeout, max_attempts
        self.on_event = on_event
        self.log = get_logger(component="local.pump")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="s3-event-pump", daemon=True)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.handled_keys: list[str] = []  # decoded keys, in the order their events were handled
        self.outcomes: list[Any] = []
        self.errors: list[str] = []

    def start(self) -> S3EventPump:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.wait_seconds + 10)

    def __enter__(self) -> S3EventPump:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def idle(self) -> bool:
        """No message being handled and none waiting (visible or in flight) in the queue."""
        with self._lock:
            if self._in_flight:
                return False
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) == 0 and int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 0

    def has_handled(self, keys: set[str]) -> bool:
        with self._lock:
            return keys <= set(self.handled_keys)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.pump_once()
            except Exception as exc:  # emulator shutting down, or transient: keep going
                if not self._stop.is_set():
                    self.errors.append(str(exc))
                    self.log.warning("pump_receive_failed", error=str(exc)[:300])
                    self._stop.wait(0.5)

    def pump_once(self) -> int:
        """Receive one round of messages and handle them; returns how many were received."""
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait_seconds,
            VisibilityTimeout=self.visibility_timeout,
            AttributeNames=["ApproximateReceiveCount"],
        )
        messages = response.get("Messages", [])
        for message in messages:
            with self._lock:
                self._in_flight += 1
            try:
                self._handle(message)
            finally:
                with self._lock:
                    self._in_flight -= 1
        return len(messages)

    def _handle(self, message: Mapping[str, Any]) -> None:
        event = json.loads(message["Body"])
        if not event.get("Records"):
            # The s3:TestEvent S3 sends when a queue is configured: an SQS artifact a Lambda never sees.
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            return
        keys = [unquote_plus(r["s3"]["object"]["key"]) for r in event.get("Records", []) if "s3" in r]
        attempt = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            outcome = self.handler(event, LambdaContext(aws_request_id=str(uuid.uuid4())))
        except Exception as exc:
            self.log.warning("handler_failed", keys=keys, attempt=attempt, error=str(exc)[:500])
            self.errors.append(f"{keys}: {exc}")
            if attempt < self.max_attempts:
                return  # redelivered after the visibility timeout, as Lambda retries an async invoke
            outcome = {"error": str(exc)}
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        with self._lock:
            self.handled_keys.extend(keys)
            self.outcomes.append(outcome)
        if self.on_event is not None:
            for key in keys:
                self.on_event(key, outcome if isinstance(outcome, Mapping) else {})
