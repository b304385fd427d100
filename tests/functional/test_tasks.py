"""The ECS task entrypoints on moto, run as the container would but without a task token (no state
machine): what each one writes, that a retried run converges to the same result, and the exit codes and
error names the state machine and the local agent rely on. The token path is in test_state_machine.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from chalicelib.batch import S3Object, build_manifest, group_by_dataset, manifest_document
from chalicelib.config import ConfigError, load_config
from chalicelib.kpi_store import dump_table
from chalicelib.layout import Layout
from chalicelib.trigger import ConfigMissingError, list_raw_objects
from ecs_tasks import common, finalize, transform, validate
from kpipe.engine.validate import dataset_files
from kpipe.generate import generate_batches
from kpipe.process import process_batches
from kpipe.tables import save_table

BID = "b-0123456789abcdef0123"


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    [one] = generate_batches(tmp_path_factory.mktemp("batch"), 25, invalid_fraction=0.1, seed=3, files_per_dataset=2, days=3)
    return one


@pytest.fixture
def env(kpipe_env: Any) -> dict[str, str]:
    return {
        "KPIPE_BUCKET": kpipe_env.bucket,
        "KPIPE_BATCH_ID": BID,
        "KPIPE_MANIFEST_KEY": f"reports/{BID}/manifest.json",
        "KPIPE_ORDER_TABLE": "OrderKPI",
        "KPIPE_CATEGORY_TABLE": "CategoryKPI",
        "KPIPE_CONTROL_TABLE": "KpipeControl",
        "KPIPE_CONFIG_KEY": "config/pipeline.yaml",
    }


def upload(kpipe_env: Any, batch: Path, layout: Layout) -> list[str]:
    keys = []
    for rels in dataset_files(load_config_default(), batch).values():
        for rel in rels:
            kpipe_env.s3.upload_file(str(batch / rel), kpipe_env.bucket, layout.raw_prefix + rel)
            keys.append(layout.raw_prefix + rel)
    return sorted(keys)


def write_manifest(kpipe_env: Any, layout: Layout, bid: str = BID) -> None:
    """What the Lambda writes before it starts the execution."""
    by_dataset, excluded = group_by_dataset(list_raw_objects(kpipe_env.s3, kpipe_env.bucket, layout.raw_prefix), layout)
    document = manifest_document(bid, build_manifest(by_dataset, layout), bucket=kpipe_env.bucket, layout=layout, excluded=excluded)
    kpipe_env.s3.put_object(Bucket=kpipe_env.bucket, Key=layout.manifest_key(bid), Body=json.dumps(document))


def load_config_default() -> Any:
    from chalicelib.config import default_config_path

    return load_config(default_config_path())


def keys(kpipe_env: Any, prefix: str) -> list[str]:
    listing = kpipe_env.s3.list_objects_v2(Bucket=kpipe_env.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def get_json(kpipe_env: Any, key: str) -> Any:
    return json.loads(kpipe_env.s3.get_object(Bucket=kpipe_env.bucket, Key=key)["Body"].read())


def tables_text(kpipe_env: Any, cfg: Any, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in cfg.kpis.items():
        save_table(out / f"{name}.json", dump_table(kpipe_env.tables[name], spec.key), list(spec.key))
    return {name: (out / f"{name}.json").read_text() for name in cfg.kpis}


def test_validate_then_transform_then_retries_converge(kpipe_env: Any, env: dict[str, str], batch: Path, tmp_path: Path) -> None:
    cfg = load_config_default()
    layout = Layout.from_config(cfg)
    raw = upload(kpipe_env, batch, layout)
    write_manifest(kpipe_env, layout)

    assert validate.main(env) == common.EXIT_SUCCEEDED
    snapshot = get_json(kpipe_env, layout.snapshot_key(BID))
    assert [o["key"] for o in snapshot["objects"]] == raw
    assert all(o["version_id"] for o in snapshot["objects"])  # the bucket is versioned: exact versions
    for name in cfg.datasets:
        valid = layout.validated_key(BID, f"{name}.parquet")
        assert keys(kpipe_env, valid) == [valid]
        assert keys(kpipe_env, layout.rejected_key(BID, name)) == [layout.rejected_key(BID, name)]
    report = get_json(kpipe_env, layout.report_key(BID))
    assert report["status"] == "RUNNING" and report["stage"] == "validated"
    assert sum(d["rows_rejected"] for d in report["datasets"].values()) > 0

    assert transform.main(env) == common.EXIT_SUCCEEDED
    report = get_json(kpipe_env, layout.report_key(BID))
    assert report["status"] == "SUCCEEDED" and report["archived"] == {"moved": len(raw), "already": 0, "missing": 0}
    assert keys(kpipe_env, layout.raw_prefix) == []
    assert keys(kpipe_env, f"archived/{BID}/") == [layout.archived_key(BID, k) for k in raw]
    expected_out = tmp_path / "process"
    process_batches(cfg, [batch], expected_out)
    expected = {name: (expected_out / f"{name}.json").read_text() for name in cfg.kpis}
    assert tables_text(kpipe_env, cfg, tmp_path / "first") == expected

    # A retried transform (say its SendTaskSuccess was lost) redoes the work: same tables, archive tolerated.
    assert transform.main(env) == common.EXIT_SUCCEEDED
    assert get_json(kpipe_env, layout.report_key(BID))["archived"] == {"moved": 0, "already": len(raw), "missing": 0}
    assert tables_text(kpipe_env, cfg, tmp_path / "again") == expected
    assert get_json(kpipe_env, layout.report_key(BID))["seq"] == 1

    # A duplicate execution's validate finds nothing left: skipped, and the finished report stays.
    assert validate.main(env) == common.EXIT_SUCCEEDED
    assert get_json(kpipe_env, layout.report_key(BID))["status"] == "SUCCEEDED"
    assert kpipe_env.tables["KpipeControl"].get_item(Key={"pk": f"batch#{BID}"})["Item"]["status"] == "SKIPPED"


def test_the_same_files_uploaded_again_are_reported_skipped(kpipe_env: Any, env: dict[str, str], batch: Path, tmp_path: Path) -> None:
    """A re-sent batch changes nothing (its rows lose to themselves) and says so: SKIPPED, naming the
    batch that first brought them, in the report and the control table; its KPIs stay as they were."""
    cfg = load_config_default()
    layout = Layout.from_config(cfg)
    upload(kpipe_env, batch, layout)
    write_manifest(kpipe_env, layout)
    assert validate.main(env) == common.EXIT_SUCCEEDED and transform.main(env) == common.EXIT_SUCCEEDED
    before = tables_text(kpipe_env, cfg, tmp_path / "first")

    again = "b-ffffffffffffffff0000"
    upload(kpipe_env, batch, layout)
    write_manifest(kpipe_env, layout, again)
    env2 = {**env, "KPIPE_BATCH_ID": again, "KPIPE_MANIFEST_KEY": layout.manifest_key(again)}
    assert validate.main(env2) == common.EXIT_SUCCEEDED and transform.main(env2) == common.EXIT_SUCCEEDED
    report = get_json(kpipe_env, layout.report_key(again))
    assert report["status"] == "SKIPPED"
    assert report["reason"] == f"already processed as seq 1 (batch {BID}): nothing changed"
    control = kpipe_env.tables["KpipeControl"].get_item(Key={"pk": f"batch#{again}"})["Item"]
    assert control["status"] == "SKIPPED" and control["reason"] == report["reason"]
    assert tables_text(kpipe_env, cfg, tmp_path / "again") == before
    assert get_json(kpipe_env, layout.report_key(BID))["status"] == "SUCCEEDED"


def test_validate_quarantines_keys_of_no_dataset_and_leaves_them_out(kpipe_env: Any, env: dict[str, str], batch: Path) -> None:
    layout = Layout.from_config(load_config_default())
    raw = upload(kpipe_env, batch, layout)
    kpipe_env.put("raw-data/notes.txt", "not data\n")
    kpipe_env.put("raw-data/orders/old/x.csv", "order_id\n1\n")
    write_manifest(kpipe_env, layout)
    assert validate.main(env) == common.EXIT_SUCCEEDED
    assert keys(kpipe_env, "quarantine/") == [f"quarantine/{BID}/notes.txt", f"quarantine/{BID}/orders/old/x.csv"]
    assert keys(kpipe_env, "raw-data/") == raw
    snapshot = get_json(kpipe_env, layout.snapshot_key(BID))
    assert snapshot["quarantined"] == ["raw-data/notes.txt", "raw-data/orders/old/x.csv"]
    assert [o["key"] for o in snapshot["objects"]] == raw


def test_validate_skips_when_none_of_the_manifest_is_left(kpipe_env: Any, env: dict[str, str], batch: Path) -> None:
    """The manifest's objects were processed by an earlier run; newer files of a complete batch are there:
    they belong to their own execution, not to this one."""
    layout = Layout.from_config(load_config_default())
    upload(kpipe_env, batch, layout)
    old = [S3Object(key=k, etag="0" * 32, version_id="gone", size=1) for k in keys(kpipe_env, "raw-data/")]
    by_dataset, _ = group_by_dataset(old, layout)
    document = manifest_document(BID, build_manifest(by_dataset, layout), bucket=kpipe_env.bucket, layout=layout)
    kpipe_env.s3.put_object(Bucket=kpipe_env.bucket, Key=layout.manifest_key(BID), Body=json.dumps(document))
    assert validate.main(env) == common.EXIT_SUCCEEDED
    report = get_json(kpipe_env, layout.report_key(BID))
    assert report["status"] == "SKIPPED" and "manifest" in report["reason"]
    assert keys(kpipe_env, "validated/") == []


def test_finalize_failed_keeps_raw_files_and_rejected_quarantines_them(kpipe_env: Any, env: dict[str, str], batch: Path) -> None:
    layout = Layout.from_config(load_config_default())
    raw = upload(kpipe_env, batch, layout)
    write_manifest(kpipe_env, layout)
    assert validate.main(env) == common.EXIT_SUCCEEDED

    failure = {"Error": "Kpipe.TaskFailed", "Cause": "ResourceNotFoundException: no table"}
    assert finalize.main({**env, "KPIPE_FINALIZE_STATUS": "failed", "KPIPE_FAILURE": json.dumps(failure)}) == 0
    report = get_json(kpipe_env, layout.report_key(BID))
    assert report["status"] == "FAILED" and report["failure"] == failure
    assert "datasets" in report  # what validate found is kept
    assert keys(kpipe_env, "raw-data/") == raw

    problems = {"threshold_problems": ["orders: 9 of 20 rows rejected (45.00%) > reject_threshold 0.1"]}
    assert finalize.main({**env, "KPIPE_FINALIZE_STATUS": "rejected", "KPIPE_FAILURE": json.dumps(problems)}) == 0
    report = get_json(kpipe_env, layout.report_key(BID))
    assert report["stage"] == "rejected" and report["reasons"] == problems["threshold_problems"]
    assert report["failure"]["Error"] == "Kpipe.ThresholdExceeded"
    assert keys(kpipe_env, "raw-data/") == []
    assert keys(kpipe_env, f"quarantine/{BID}/") == [layout.quarantine_key(BID, k) for k in raw]
    assert kpipe_env.tables["KpipeControl"].get_item(Key={"pk": f"batch#{BID}"})["Item"]["status"] == "FAILED"


def test_exit_codes_tell_the_agent_whether_the_outcome_was_reported(kpipe_env: Any, env: dict[str, str]) -> None:
    assert common.run_task("t", lambda ctx, log: {"ok": True}, env) == common.EXIT_SUCCEEDED
    assert common.run_task("t", lambda ctx, log: 1 / 0, env) == common.EXIT_REPORTED_FAILURE
    assert common.run_task("t", lambda ctx, log: {}, {"KPIPE_BATCH_ID": BID}) == common.EXIT_UNREPORTED  # no bucket
    kpipe_env.s3.delete_object(Bucket=kpipe_env.bucket, Key="config/pipeline.yaml")
    assert validate.main(env) == common.EXIT_REPORTED_FAILURE  # no config: Kpipe.ConfigError, reported


def _client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (_client_error("ThrottlingException"), "Kpipe.Transient"),
        (_client_error("ProvisionedThroughputExceededException"), "Kpipe.Transient"),
        (_client_error("SlowDown", 503), "Kpipe.Transient"),
        (_client_error("Whatever", 500), "Kpipe.Transient"),
        (EndpointConnectionError(endpoint_url="http://x"), "Kpipe.Transient"),
        (common.TransientError("retry me"), "Kpipe.Transient"),
        (_client_error("ResourceNotFoundException"), "Kpipe.TaskFailed"),
        (_client_error("AccessDenied", 403), "Kpipe.TaskFailed"),
        (ConfigError(["x: bad; allowed: y"]), "Kpipe.ConfigError"),
        (ConfigMissingError("no config"), "Kpipe.ConfigError"),
        (ValueError("bug"), "Kpipe.TaskFailed"),
    ],
)
def test_error_names(exc: Exception, name: str) -> None:
    assert common.classify(exc) == name
