"""Shared by the infra tests: the contract names (parsed from docs/contracts.md) and a stand-in ASL.

The definition is `stepfunctions/pipeline.asl.json` when it exists. Until it does, a small stand-in
written to a temporary directory (never to `stepfunctions/`) uses every contract placeholder and the
`$$.` context paths that a careless substitution would break."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STACK_NAME = "kpipe-test"

STAND_IN_ASL: dict[str, Any] = {
    "Comment": "stand-in for stepfunctions/pipeline.asl.json (tests/infra only)",
    "StartAt": "AcquireLease",
    "States": {
        "AcquireLease": {
            "Type": "Task",
            "Resource": "arn:aws:states:::dynamodb:putItem",
            "Parameters": {
                "TableName": "${ControlTableName}",
                "Item": {"pk": {"S": "lock#pipeline"}, "owner": {"S.$": "$$.Execution.Id"}},
            },
            "ResultPath": None,
            "Next": "Validate",
        },
        **{
            name: {
                "Type": "Task",
                "Resource": "arn:aws:states:::ecs:runTask.waitForTaskToken",
                "Parameters": {
                    "LaunchType": "FARGATE",
                    "Cluster": "${ClusterArn}",
                    "TaskDefinition": "${" + name + "TaskDefinitionArn}",
                    "NetworkConfiguration": {
                        "AwsvpcConfiguration": {
                            "Subnets": ["${SubnetA}", "${SubnetB}"],
                            "SecurityGroups": ["${SecurityGroupId}"],
                            "AssignPublicIp": "ENABLED",
                        }
                    },
                    "Overrides": {
                        "ContainerOverrides": [
                            {
                                "Name": "${ContainerName}",
                                "Environment": [{"Name": "KPIPE_TASK_TOKEN", "Value.$": "$$.Task.Token"}],
                            }
                        ]
                    },
                },
                "ResultPath": f"$.{name.lower()}",
                "Next": nxt,
            }
            for name, nxt in (("Validate", "Transform"), ("Transform", "Finalize"), ("Finalize", "Release"))
        },
        "Release": {
            "Type": "Task",
            "Resource": "arn:aws:states:::dynamodb:deleteItem",
            "Parameters": {"TableName": "${ControlTableName}", "Key": {"pk": {"S": "lock#pipeline"}}},
            "End": True,
        },
    },
}


def contract_section(title: str) -> str:
    """The text of one `## title` section of docs/contracts.md."""
    text = (ROOT / "docs" / "contracts.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"docs/contracts.md has no section {title!r}"
    return match.group(1)


def contract_placeholders() -> set[str]:
    return set(re.findall(r"\$\{(\w+)\}", contract_section("State machine placeholders (DefinitionSubstitutions)")))


def contract_stack_names() -> tuple[list[str], list[str]]:
    """(parameters, outputs) named in the contract's "Stack" section."""
    section = contract_section("Stack (infra/template.yaml)")
    params_text = section.split("Parameters:", 1)[1].split("Outputs", 1)[0]
    outputs_text = section.split("Outputs", 1)[1].split("`kpipe/infra.py`", 1)[0]
    return re.findall(r"`(\w+)`", params_text), re.findall(r"`(\w+)`", outputs_text)


def contract_env() -> list[str]:
    return re.findall(r"^\| `(\w+)`", contract_section("Runtime environment (Lambda and tasks)"), re.M)
