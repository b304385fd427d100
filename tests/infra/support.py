"""Shared by the infra tests: the contract names (parsed from docs/contracts.md) and a stand-in ASL.

The definition is `stepfunctions/pipeline.asl.json` when it exists. Until it does, a small stand-in
written to a temporary directory (never to `stepfunctions/`) uses every contract placeholder and the
`$$.` context paths that a careless substitution would break."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STACK_NAME = "kpipe-test"
FIRST_PARTY = {"chalicelib", "kpipe", "ecs_tasks"}

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


# ------------------------------------------------------------------------------------------------
# What code a principal runs (for the image and the policy tests)
# ------------------------------------------------------------------------------------------------
def module_file(module: str) -> Path | None:
    """The repository file of a first-party module, or None."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def runtime_imports(path: Path) -> list[tuple[str, int]]:
    """Absolute module names imported by `path` at run time (`if TYPE_CHECKING:` blocks skipped)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: list[tuple[str, int]] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
                continue
            for child in ast.walk(node):
                if isinstance(child, ast.Import):
                    found.extend((a.name, child.lineno) for a in child.names)
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join([*parent, base] if base else parent)
                    found.append((base, child.lineno))
                    found.extend((f"{base}.{a.name}", child.lineno) for a in child.names)

    visit(tree.body)
    return found


def reachable(roots: list[Path]) -> set[Path]:
    """First-party files imported, transitively, from `roots` (package __init__ files included)."""
    seen: set[Path] = set()
    todo = list(roots)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        parts = path.relative_to(ROOT).parts
        for i in range(1, len(parts)):
            init = ROOT.joinpath(*parts[:i], "__init__.py")
            if init.is_file():
                todo.append(init)
        for module, _ in runtime_imports(path):
            if module.split(".")[0] in FIRST_PARTY and (target := module_file(module)) is not None:
                todo.append(target)
    return seen


def called_names(files: set[Path]) -> set[str]:
    """Method names called in `files`, plus identifier-like string constants (`get_paginator("x")`)."""
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                names.add(node.value)
    return names


def is_stdlib(top: str) -> bool:
    return top in sys.stdlib_module_names or top == "__future__"
