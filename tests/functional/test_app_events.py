"""The S3 trigger through chalice's test client on moto: presence, manifest, one execution per batch, reruns.

Events come from tests/events/*.json (real-shaped S3 records); the objects they name are uploaded to the
moto bucket first, as S3 would have them before it sends the event.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from chalice.test import Client

from chalicelib import trigger
from chalicelib.batch import BATCH_ID_RE
from chalicelib.config import ConfigError

if TYPE_CHECKING:
    from tests.functional.conftest import KpipeEnv

PRODUCTS = "raw-data/products.csv"
ORDERS_SPACED = "raw-data/orders/2025 03 orders.csv"  # what tests/events/s3_put_orders_encoded.json names
ITEMS = "raw-data/order_items/items-001.csv"
LoadEvent = Callable[..., dict[str, Any]]


def _logs(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _outcome(client: Client, event: dict[str, Any]) -> dict[str, Any]:
    payload = client.lambda_.invoke("on_raw_data", event).payload
    (outcome,) = payload["outcomes"]
    return outcome


def _upload_complete(env: KpipeEnv) -> None:
    env.put(PRODUCTS, "id,category,retail_price\n1,Books,10\n")
    env.put(ORDERS_SPACED, "order_id,user_id,created_at\n1,7,2025-03-01T10:00:00\n")
    env.put(ITEMS, "id,order_id,product_id,sale_price\n1,1,1,9.5\n")


def _read_json(env: KpipeEnv, key: str) -> Any:
    return json.loads(env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read())


def test_incomplete_batch_starts_nothing_and_logs_what_is_missing(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent, capsys: pytest.CaptureFixture[str]
) -> None:
    kpipe_env.put(PRODUCTS)
    kpipe_env.put(ORDERS_SPACED)
    outcome = _outcome(chalice_client, load_event("s3_put_orders_encoded"))
    assert outcome["status"] == "incomplete"
    assert outcome["key"] == ORDERS_SPACED
    assert outcome["missing"] == ["order_items (raw-data/order_items/*.csv)"]
    assert kpipe_env.executions() == []
    logs = _logs(capsys.readouterr().out)
    (line,) = [entry for entry in logs if entry.get("event") == "batch_incomplete"]
    assert line["missing"] == ["order_items (raw-data/order_items/*.csv)"]
    assert line["key"] == ORDERS_SPACED
    assert line["level"] == "info"
    (metric,) = [entry for entry in logs if "_aws" in entry]
    assert metric["IncompleteTriggers"] == 1 and metric["BatchesStarted"] == 0


def test_complete_batch_from_url_encoded_key_starts_one_execution_with_a_manifest(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent, capsys: pytest.CaptureFixture[str]
) -> None:
    _upload_complete(kpipe_env)
    outcome = _outcome(chalice_client, load_event("s3_put_orders_encoded"))
    assert outcome["status"] == "started"
    assert outcome["key"] == ORDERS_SPACED  # '%2F' and '+' decoded
    bid = outcome["batch_id"]
    assert BATCH_ID_RE.match(bid)

    (execution,) = kpipe_env.executions()
    assert execution["name"] == bid
    assert execution["executionArn"] == outcome["execution_arn"]
    described = kpipe_env.sfn.describe_execution(executionArn=execution["executionArn"])
    execution_input = json.loads(described["input"])
    assert execution_input["batch_id"] == bid
    assert execution_input["manifest_key"] == f"reports/{bid}/manifest.json" == outcome["manifest_key"]
    assert execution_input["settle_seconds"] == 30  # pipeline.yaml trigger.settle_seconds

    manifest = _read_json(kpipe_env, f"reports/{bid}/manifest.json")
    assert manifest["batch_id"] == bid
    assert [o["key"] for o in manifest["objects"]] == sorted([PRODUCTS, ORDERS_SPACED, ITEMS])
    for o in manifest["objects"]:
        head = kpipe_env.s3.head_object(Bucket=kpipe_env.bucket, Key=o["key"])
        assert o["version_id"] == head["VersionId"]
        assert o["etag"] == head["ETag"].strip('"')
        assert o["size"] == head["ContentLength"]

    logs = _logs(capsys.readouterr().out)
    (started,) = [entry for entry in logs if entry.get("event") == "execution_started"]
    assert started["batch_id"] == bid
    (metric,) = [entry for entry in logs if "_aws" in entry]
    assert metric["BatchesStarted"] == 1
    assert metric["batch_id"] == bid
    assert metric["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "kpipe"


@pytest.mark.parametrize("event_name", ["s3_put_non_batch_key", "s3_put_nested_orders", "s3_put_outside_prefix"])
def test_keys_that_are_not_part_of_a_batch_are_ignored_even_when_a_batch_is_complete(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent, event_name: str
) -> None:
    _upload_complete(kpipe_env)
    event = load_event(event_name)
    kpipe_env.put(event["Records"][0]["s3"]["object"]["key"])
    outcome = _outcome(chalice_client, event)
    assert outcome["status"] == "ignored"
    assert kpipe_env.executions() == []


def test_non_batch_objects_present_are_excluded_from_the_manifest(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent
) -> None:
    _upload_complete(kpipe_env)
    kpipe_env.put("raw-data/notes/README.txt")
    kpipe_env.put("raw-data/orders/old/2024-orders.csv")
    outcome = _outcome(chalice_client, load_event("s3_put_products"))
    assert outcome["status"] == "started"
    assert outcome["excluded"] == ["raw-data/notes/README.txt", "raw-data/orders/old/2024-orders.csv"]
    manifest = _read_json(kpipe_env, outcome["manifest_key"])
    assert len(manifest["objects"]) == 3
    assert manifest["excluded"] == outcome["excluded"]


def test_duplicate_event_storm_starts_exactly_one_execution(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent, capsys: pytest.CaptureFixture[str]
) -> None:
    _upload_complete(kpipe_env)
    event = load_event("s3_put_orders_encoded")
    statuses = Counter(_outcome(chalice_client, event)["status"] for _ in range(50))
    assert statuses == {"started": 1, "duplicate": 49}
    assert len(kpipe_env.executions()) == 1
    logs = _logs(capsys.readouterr().out)
    assert sum(entry.get("BatchesStarted", 0) for entry in logs if "_aws" in entry) == 1
    assert sum(entry.get("DuplicateTriggers", 0) for entry in logs if "_aws" in entry) == 49
    assert len([entry for entry in logs if entry.get("event") == "duplicate_batch"]) == 49
    # the manifest is written once, not once per duplicate
    versions = kpipe_env.s3.list_object_versions(Bucket=kpipe_env.bucket, Prefix="reports/")["Versions"]
    assert len(versions) == 1


def test_concurrent_invocations_start_exactly_one_execution(kpipe_env: KpipeEnv, load_event: LoadEvent) -> None:
    """8 threads, each with its own boto3 clients, each handling every event of the batch twice, all
    released at once. moto's backends are process-global, so the threads race on the same bucket and
    state machine as concurrent Lambda containers would on AWS."""
    _upload_complete(kpipe_env)
    events = [load_event(n) for n in ("s3_put_products", "s3_put_orders_encoded", "s3_put_order_items")] * 2
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            session = boto3.session.Session(region_name=kpipe_env.region)
            s3, sfn = session.client("s3"), session.client("stepfunctions")

            def cfg() -> Any:
                return trigger.load_config_from_s3(s3, kpipe_env.bucket, kpipe_env.config_key)

            barrier.wait()
            for event in events:
                for result in trigger.handle_s3_event(event, s3, sfn, cfg, kpipe_env.state_machine_arn):
                    with lock:
                        outcomes.append(result.status)
        except BaseException as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert Counter(outcomes) == {"started": 1, "duplicate": 8 * len(events) - 1}
    (execution,) = kpipe_env.executions()
    assert BATCH_ID_RE.match(execution["name"])


def test_a_file_arriving_later_starts_a_second_execution_with_another_id(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent
) -> None:
    _upload_complete(kpipe_env)
    first = _outcome(chalice_client, load_event("s3_put_products"))
    kpipe_env.put("raw-data/orders/late.csv")
    late_event = load_event("s3_put_orders_encoded")
    late_event["Records"][0]["s3"]["object"]["key"] = "raw-data/orders/late.csv"
    second = _outcome(chalice_client, late_event)
    assert first["status"] == second["status"] == "started"
    assert first["batch_id"] != second["batch_id"]
    assert {e["name"] for e in kpipe_env.executions()} == {first["batch_id"], second["batch_id"]}
    later = _read_json(kpipe_env, second["manifest_key"])
    assert "raw-data/orders/late.csv" in [o["key"] for o in later["objects"]]
    # a repeat of an earlier event now sees the larger set: a duplicate of the second batch, not a third
    assert _outcome(chalice_client, load_event("s3_put_products"))["status"] == "duplicate"
    assert len(kpipe_env.executions()) == 2


def test_reuploading_identical_bytes_is_a_new_batch(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent
) -> None:
    """Same ETag, new version: a new id, so a re-sent batch is processed rather than swallowed as a duplicate."""
    _upload_complete(kpipe_env)
    first = _outcome(chalice_client, load_event("s3_put_products"))
    kpipe_env.put(PRODUCTS, "id,category,retail_price\n1,Books,10\n")
    second = _outcome(chalice_client, load_event("s3_put_products"))
    assert second["status"] == "started"
    assert second["batch_id"] != first["batch_id"]


def test_multi_record_event_handles_every_record_and_removals_are_ignored(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent
) -> None:
    kpipe_env.put(PRODUCTS)
    kpipe_env.put(ITEMS)
    payload = chalice_client.lambda_.invoke("on_raw_data", load_event("s3_multi_record")).payload
    assert [o["status"] for o in payload["outcomes"]] == ["incomplete", "incomplete"]
    removed = chalice_client.lambda_.invoke("on_raw_data", load_event("s3_delete_products")).payload
    assert removed == {"outcomes": []}


def test_generated_chalice_event_for_a_plain_key_works(chalice_client: Client, kpipe_env: KpipeEnv) -> None:
    _upload_complete(kpipe_env)
    event = chalice_client.events.generate_s3_event(kpipe_env.bucket, ITEMS)
    assert _outcome(chalice_client, event)["status"] == "started"


def test_listing_is_paginated_and_sees_only_current_versions(kpipe_env: KpipeEnv) -> None:
    for i in range(7):
        kpipe_env.put(f"raw-data/orders/{i:02d}.csv", f"v1-{i}")
    latest = kpipe_env.put("raw-data/orders/03.csv", "v2")  # overwritten: only the new version counts
    kpipe_env.s3.delete_object(Bucket=kpipe_env.bucket, Key="raw-data/orders/05.csv")  # delete marker
    listed = trigger.list_raw_objects(kpipe_env.s3, kpipe_env.bucket, "raw-data/", page_size=2)
    assert [o.key for o in listed] == [f"raw-data/orders/{i:02d}.csv" for i in (0, 1, 2, 3, 4, 6)]
    assert next(o for o in listed if o.key.endswith("03.csv")).version_id == latest


def test_config_is_read_from_the_bucket_and_cached_per_etag(kpipe_env: KpipeEnv) -> None:
    first = trigger.load_config_from_s3(kpipe_env.s3, kpipe_env.bucket, kpipe_env.config_key)
    assert trigger.load_config_from_s3(kpipe_env.s3, kpipe_env.bucket, kpipe_env.config_key) is first  # 304: cached
    text = kpipe_env.s3.get_object(Bucket=kpipe_env.bucket, Key=kpipe_env.config_key)["Body"].read().decode()
    kpipe_env.put(kpipe_env.config_key, text.replace("settle_seconds: 30", "settle_seconds: 5"))
    changed = trigger.load_config_from_s3(kpipe_env.s3, kpipe_env.bucket, kpipe_env.config_key)
    assert changed is not first
    assert changed.trigger.settle_seconds == 5
    kpipe_env.put(kpipe_env.config_key, "version: 1\ndatasets: {}\n")
    with pytest.raises(ConfigError):
        trigger.load_config_from_s3(kpipe_env.s3, kpipe_env.bucket, kpipe_env.config_key)


def test_edited_config_changes_the_next_executions_settle_time(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent
) -> None:
    text = kpipe_env.s3.get_object(Bucket=kpipe_env.bucket, Key=kpipe_env.config_key)["Body"].read().decode()
    kpipe_env.put(kpipe_env.config_key, text.replace("settle_seconds: 30", "settle_seconds: 2"))
    _upload_complete(kpipe_env)
    outcome = _outcome(chalice_client, load_event("s3_put_products"))
    described = kpipe_env.sfn.describe_execution(executionArn=outcome["execution_arn"])
    assert json.loads(described["input"])["settle_seconds"] == 2


def test_missing_config_fails_the_invocation_loudly(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent, capsys: pytest.CaptureFixture[str]
) -> None:
    kpipe_env.s3.delete_object(Bucket=kpipe_env.bucket, Key=kpipe_env.config_key)
    with pytest.raises(trigger.ConfigMissingError, match=r"config/pipeline\.yaml"):
        chalice_client.lambda_.invoke("on_raw_data", load_event("s3_put_products"))
    assert any(entry.get("event") == "record_failed" for entry in _logs(capsys.readouterr().out))


def test_missing_state_machine_arn_is_a_clear_error(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KPIPE_STATE_MACHINE_ARN")
    with pytest.raises(RuntimeError, match="KPIPE_STATE_MACHINE_ARN"):
        chalice_client.lambda_.invoke("on_raw_data", load_event("s3_put_products"))


# --- reruns ------------------------------------------------------------------------------------------


def _failed_batch(client: Client, env: KpipeEnv, load_event: LoadEvent) -> str:
    """A batch whose execution ended (stop_execution stands in for the failure branch; its files stay)."""
    _upload_complete(env)
    outcome = _outcome(client, load_event("s3_put_products"))
    env.sfn.stop_execution(executionArn=outcome["execution_arn"], error="TaskFailed")
    return str(outcome["batch_id"])


def test_rerun_starts_attempts_named_r1_r2_for_a_failed_batch(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent
) -> None:
    bid = _failed_batch(chalice_client, kpipe_env, load_event)

    response = chalice_client.http.post(f"/batches/{bid}/rerun")
    assert response.status_code == 202
    body = response.json_body
    assert body["execution_name"] == f"{bid}-r1"
    assert body["attempt"] == 1
    assert body["added"] == []
    described = kpipe_env.sfn.describe_execution(executionArn=body["execution_arn"])
    assert json.loads(described["input"]) == {
        "batch_id": bid,
        "manifest_key": f"reports/{bid}/manifest.json",
        "settle_seconds": 0,
        "attempt": 1,
    }
    assert _read_json(kpipe_env, f"reports/{bid}/manifest.json")["attempt"] == 1

    # while r1 runs, another rerun is refused
    busy = chalice_client.http.post(f"/batches/{bid}/rerun")
    assert busy.status_code == 409
    assert f"{bid}-r1" in busy.json_body["Message"]

    kpipe_env.sfn.stop_execution(executionArn=body["execution_arn"])
    kpipe_env.put("raw-data/orders/late.csv")  # arrived meanwhile: the rerun takes it along
    again = chalice_client.http.post(f"/batches/{bid}/rerun")
    assert again.status_code == 202
    assert again.json_body["execution_name"] == f"{bid}-r2"
    assert again.json_body["added"] == ["raw-data/orders/late.csv"]
    names = {e["name"] for e in kpipe_env.executions()}
    assert {bid, f"{bid}-r1", f"{bid}-r2"} <= names


def test_rerun_skips_an_attempt_number_taken_concurrently(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent
) -> None:
    bid = _failed_batch(chalice_client, kpipe_env, load_event)
    # another rerun took r1 between our listing and our start: simulate by pre-creating r1, stopped
    taken = kpipe_env.sfn.start_execution(stateMachineArn=kpipe_env.state_machine_arn, name=f"{bid}-r1", input="{}")
    kpipe_env.sfn.stop_execution(executionArn=taken["executionArn"])
    outcome = trigger.rerun(
        kpipe_env.s3,
        kpipe_env.sfn,
        kpipe_env.bucket,
        bid,
        lambda: trigger.load_config_from_s3(kpipe_env.s3, kpipe_env.bucket, kpipe_env.config_key),
        kpipe_env.state_machine_arn,
    )
    assert outcome.execution_name == f"{bid}-r2"


def test_rerun_refuses_when_the_batch_files_are_gone(
    chalice_client: Client, kpipe_env: KpipeEnv, load_event: LoadEvent
) -> None:
    bid = _failed_batch(chalice_client, kpipe_env, load_event)
    kpipe_env.put(ITEMS, "replaced content")  # the batch's version of this file is no longer current
    response = chalice_client.http.post(f"/batches/{bid}/rerun")
    assert response.status_code == 409
    assert ITEMS in response.json_body["Message"]
    kpipe_env.s3.delete_object(Bucket=kpipe_env.bucket, Key=PRODUCTS)  # archived
    response = chalice_client.http.post(f"/batches/{bid}/rerun")
    assert response.status_code == 409
    assert "products" in response.json_body["Message"]


def test_rerun_of_unknown_or_malformed_batch(chalice_client: Client, kpipe_env: KpipeEnv) -> None:
    assert chalice_client.http.post("/batches/b-0123456789abcdef0123/rerun").status_code == 404
    assert chalice_client.http.post("/batches/not-a-batch/rerun").status_code == 400
    assert kpipe_env.executions() == []


def test_handler_is_callable_as_lambda_calls_it(
    kpipe_env: KpipeEnv, load_event: LoadEvent, capsys: pytest.CaptureFixture[str]
) -> None:
    """The local pump's contract (docs/contracts.md): `app.on_raw_data(event, context)` with a raw event dict."""
    import app as app_module

    class Context:
        aws_request_id = "req-123"

    _upload_complete(kpipe_env)
    result = app_module.on_raw_data(load_event("s3_put_orders_encoded"), Context())
    assert [o["status"] for o in result["outcomes"]] == ["started"]
    (line,) = [entry for entry in _logs(capsys.readouterr().out) if entry.get("event") == "execution_started"]
    assert line["request_id"] == "req-123"
    assert line["batch_id"] == result["outcomes"][0]["batch_id"]
