"""Write a chalice stage from the kpipe stack's outputs: the stage's environment variables in
`.chalice/config.json` and its least-privilege IAM policy `.chalice/policy-<stage>.json`.

Why generated: the Lambda's names and ARNs (bucket, tables, state machine) exist only once the stack
does, and a policy scoped to them cannot be written by hand before. The KPI tables are pipeline.yaml's:
the stack outputs them as `KpiTables` (JSON, logical -> deployed name, the Lambda's KPIPE_KPI_TABLES) and
`KpiTableIndexes` (JSON, logical -> GSI names), and the policy grants reads on exactly those. `make deploy` runs this between the
stack deployment and `chalice deploy`:

    python infra/write_stage_config.py --stage dev --outputs build/infra/outputs-dev.json

The committed policy files are this script's output for placeholder outputs (`--placeholder`: the default
pipeline's two tables, whatever pipeline.yaml holds): scoped the same way, pointing at nothing, so a
`chalice deploy` that skipped this step grants no access.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHALICE_DIR = ROOT / ".chalice"
APP_NAME = "kpipe"  # app.py: Chalice(app_name="kpipe")
# The S3 prefixes the Lambda touches (pipeline.yaml `storage`; tests/infra checks they agree).
RAW_PREFIX = "raw-data/"
CONFIG_PREFIX = "config/"
REPORTS_PREFIX = "reports/"
CATEGORY_INDEX = "order_date-index"  # the default CategoryKPI's GSI (outputs of stacks older than KpiTables)

REQUIRED_OUTPUTS = ("BucketName", "StateMachineArn", "ControlTableName")
# Variables older stages had, superseded by KPIPE_KPI_TABLES (removed from the stage when it is written).
LEGACY_VARIABLES = ("KPIPE_ORDER_TABLE", "KPIPE_CATEGORY_TABLE")


def placeholder_outputs(stage: str) -> dict[str, str]:
    """Outputs that name no real resource: what the committed policy files are rendered from."""
    return {
        "BucketName": "replaced-by-make-deploy",
        "StateMachineArn": f"arn:aws:states:REGION:ACCOUNT:stateMachine:kpipe-{stage}-pipeline",
        "KpiTables": json.dumps({"OrderKPI": "OrderKPI", "CategoryKPI": "CategoryKPI"}),
        "KpiTableIndexes": json.dumps({"OrderKPI": [], "CategoryKPI": [CATEGORY_INDEX]}),
        "ControlTableName": "KpipeControl",
    }


def kpi_tables(outputs: dict[str, str]) -> dict[str, str]:
    """Logical -> deployed name of every KPI table: the `KpiTables` output, or (a stack deployed before it
    existed) `OrderTableName` and `CategoryTableName`."""
    if "KpiTables" in outputs:
        return dict(json.loads(outputs["KpiTables"]))
    legacy = {"OrderKPI": "OrderTableName", "CategoryKPI": "CategoryTableName"}
    if all(k in outputs for k in legacy.values()):
        return {name: outputs[key] for name, key in legacy.items()}
    raise KeyError("stack outputs lack ['KpiTables']")


def kpi_indexes(outputs: dict[str, str]) -> dict[str, list[str]]:
    """Logical name -> GSI names (the `KpiTableIndexes` output; older stacks: CategoryKPI's order_date-index)."""
    if "KpiTableIndexes" in outputs:
        return {k: list(v) for k, v in json.loads(outputs["KpiTableIndexes"]).items()}
    return {"CategoryKPI": [CATEGORY_INDEX]} if "KpiTables" not in outputs else {}


def stage_environment(outputs: dict[str, str]) -> dict[str, str]:
    """The Lambda's environment (docs/contracts.md, "Runtime environment")."""
    return {
        "KPIPE_BUCKET": outputs["BucketName"],
        "KPIPE_STATE_MACHINE_ARN": outputs["StateMachineArn"],
        "KPIPE_KPI_TABLES": json.dumps(kpi_tables(outputs), separators=(",", ":")),
        "KPIPE_CONTROL_TABLE": outputs["ControlTableName"],
        "KPIPE_CONFIG_KEY": f"{CONFIG_PREFIX}pipeline.yaml",
    }


def lambda_policy(outputs: dict[str, str], stage: str) -> dict[str, Any]:
    """The Lambda's policy: each statement is one thing app.py/chalicelib does, on the resources it
    does it to. Region and account come from the state machine's ARN (no extra AWS call)."""
    missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
    if missing:
        raise KeyError(f"stack outputs lack {missing}")
    tables, indexes = kpi_tables(outputs), kpi_indexes(outputs)
    arn = outputs["StateMachineArn"].split(":")
    partition, region, account = arn[1], arn[3], arn[4]
    bucket = f"arn:{partition}:s3:::{outputs['BucketName']}"

    def table(name: str) -> str:
        return f"arn:{partition}:dynamodb:{region}:{account}:table/{name}"

    log_group = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{APP_NAME}-{stage}"
    table_arns = [table(name) for name in tables.values()]
    index_arns = [f"{table(tables[name])}/index/{index}" for name in tables for index in indexes.get(name, [])]
    statements: list[dict[str, Any]] = [
        {
            # Lambda's own logs: the API handler (kpipe-<stage>) and each other function (kpipe-<stage>-<name>).
            "Sid": "WriteOwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [log_group, f"{log_group}:*", f"{log_group}-*", f"{log_group}-*:*"],
        },
        {
            # Key names only: S3 answers 404 NoSuchKey for a missing manifest, report or config (the
            # API's 404s, the trigger's "no config yet") only to a principal allowed to list the
            # bucket; to any other it answers 403.
            "Sid": "ListKeys",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket,
        },
        {
            # trigger.list_raw_objects: the current version of every raw object (the manifest pins versions).
            "Sid": "ListRawData",
            "Effect": "Allow",
            "Action": "s3:ListBucketVersions",
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": [RAW_PREFIX, f"{RAW_PREFIX}*"]}},
        },
        {
            # trigger.load_config_from_s3 (pipeline.yaml in force); manifests and reports for
            # GET /batches/{id} and the rerun.
            "Sid": "ReadConfigAndReports",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": [f"{bucket}/{CONFIG_PREFIX}*", f"{bucket}/{REPORTS_PREFIX}*"],
        },
        {
            # trigger: reports/<batch_id>/manifest.json.
            "Sid": "WriteManifests",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": f"{bucket}/{REPORTS_PREFIX}*",
        },
        {
            # trigger: StartExecution(name=batch_id); rerun: the attempts of a batch.
            "Sid": "StartPipeline",
            "Effect": "Allow",
            "Action": ["states:StartExecution", "states:ListExecutions"],
            "Resource": outputs["StateMachineArn"],
        },
        {
            # The KPI read API (kpi_store), on every KPI table of pipeline.yaml: point reads, BatchGetItem
            # date ranges, key queries, and the paginated Scan of GET /kpis/{table} without a key.
            "Sid": "ReadKpis",
            "Effect": "Allow",
            "Action": ["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:Scan"],
            "Resource": table_arns,
        },
    ]
    if index_arns:
        # GET /kpis/{table} through a GSI (?order_date= on CategoryKPI, /kpis/dates/{date}/categories).
        statements.append({"Sid": "ReadKpiIndexes", "Effect": "Allow", "Action": "dynamodb:Query", "Resource": index_arns})
    return {"Version": "2012-10-17", "Statement": statements}


def write_stage_config(
    stage: str, outputs: dict[str, str], chalice_dir: Path = CHALICE_DIR, *, environment: bool = True
) -> list[Path]:
    """Update `config.json` (this stage's environment only; everything else kept) and write
    `policy-<stage>.json`. Returns the paths written."""
    config_path = chalice_dir / "config.json"
    config = json.loads(config_path.read_text())
    stage_cfg = config.setdefault("stages", {}).setdefault(stage, {})
    policy_file = f"policy-{stage}.json"
    stage_cfg["autogen_policy"] = False
    stage_cfg["iam_policy_file"] = policy_file
    written = []
    policy_path = chalice_dir / policy_file
    policy_path.write_text(json.dumps(lambda_policy(outputs, stage), indent=2) + "\n")
    written.append(policy_path)
    if environment:
        variables = stage_cfg.setdefault("environment_variables", {})
        for name in LEGACY_VARIABLES:
            variables.pop(name, None)
        variables.update(stage_environment(outputs))
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        written.append(config_path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--outputs", type=Path, help="JSON of the stack outputs (python -m kpipe.infra outputs)")
    source.add_argument(
        "--placeholder", action="store_true", help="re-render the committed policy file; config.json untouched"
    )
    parser.add_argument("--chalice-dir", type=Path, default=CHALICE_DIR)
    args = parser.parse_args(argv)
    if args.placeholder:
        outputs, environment = placeholder_outputs(args.stage), False
    else:
        outputs, environment = json.loads(args.outputs.read_text()), True
    try:
        paths = write_stage_config(args.stage, outputs, args.chalice_dir, environment=environment)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
