"""The deploy guide (infra/README.md) and infra/deploy.mk, read as a new user would: every make target,
file, stack output, kpipe.infra subcommand, chalice command and AWS CLI operation they name exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import botocore.session
import pytest

from kpipe import infra
from tests.infra.support import ROOT

README = ROOT / "infra" / "README.md"
DEPLOY_MK = ROOT / "infra" / "deploy.mk"
# Files the deployment itself creates (not in a fresh clone).
GENERATED = {
    "build/infra/outputs-dev.json",
    "build/infra/template.json",
    ".chalice/deployed/dev.json",
}
# AWS CLI commands that are CLI customisations rather than API operations.
CLI_CUSTOM = {("s3", "cp"), ("s3", "ls"), ("logs", "tail"), ("ecr", "get-login-password"), ("sso", "login")}


def readme() -> str:
    return README.read_text()


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text() + DEPLOY_MK.read_text()
    return set(re.findall(r"^([a-zA-Z][\w-]*):", text, re.M))


def test_make_targets_named_exist() -> None:
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", readme()))
    assert {"deploy", "destroy"} <= named
    assert named - make_targets() == set()


def test_deploy_mk_has_deploy_and_destroy_and_the_variables_the_guide_names() -> None:
    targets = make_targets()
    assert {"deploy", "destroy", "deploy-stack", "deploy-image", "deploy-config", "deploy-lambda"} <= targets
    defined = set(re.findall(r"^([A-Z_]+) \??=", DEPLOY_MK.read_text(), re.M))
    named = {n for n in re.findall(r"\b([A-Z][A-Z_]{3,})=", readme()) if not n.startswith(("AWS_", "KPIPE_"))}
    named -= {"STACK", "BUCKET", "SM", "LOGS", "URL"}  # shell variables of the examples
    assert named - defined == set()


def test_files_named_exist() -> None:
    tops = {p.name for p in ROOT.iterdir()}
    missing = []
    for token in re.findall(r"[\w.][\w.*/-]*", readme().replace("<stage>", "dev")):
        top = token.split("/", 1)[0]
        if "/" not in token or top not in tops | {"build"} or top in {"raw-data", "config", "reports"}:
            continue
        path = token.rstrip(".,")
        if path.startswith(".venv/bin/"):
            assert (ROOT / path).exists() or path.endswith(("python", "chalice", "cfn-lint", "pytest", "kpipe"))
            continue
        if "*" in path:
            if not list(ROOT.glob(path)):
                missing.append(path)
        elif path not in GENERATED and not (ROOT / path).exists():
            missing.append(path)
    assert missing == []


def test_outputs_and_parameters_named_exist() -> None:
    template = infra.render_template_dict()  # the KPI tables' outputs and parameters come with the rendering
    known = set(template["Outputs"]) | set(template["Parameters"])
    named = set(re.findall(r"`([A-Z][A-Za-z]+(?:Name|Arn|Uri))`", readme()))
    named |= set(re.findall(r"--key (\w+)", readme()))
    named |= set(re.findall(r"<([A-Z][A-Za-z]+(?:Name|Arn|Uri))>", readme()))
    assert named and named - known == set()


def test_kpipe_infra_subcommands_exist() -> None:
    for sub in set(re.findall(r"-m kpipe\.infra ([a-z-]+)", readme() + DEPLOY_MK.read_text())):
        with pytest.raises(SystemExit) as exit_info:
            infra.main([sub, "--help"])
        assert exit_info.value.code == 0, sub


def test_chalice_commands_exist() -> None:
    from chalice.cli import cli

    named = set(re.findall(r"chalice (deploy|delete|url|logs|package|local)\b", readme() + DEPLOY_MK.read_text()))
    assert {"deploy", "delete"} <= named
    assert named <= set(cli.commands)


def test_aws_cli_operations_exist() -> None:
    session = botocore.session.get_session()
    text = readme() + DEPLOY_MK.read_text()
    found = set(re.findall(r"\baws ([a-z0-9]+) ([a-z][a-z0-9-]+)", text))
    assert ("stepfunctions", "list-executions") in found
    for service, command in found - CLI_CUSTOM:
        operation = "".join(part.capitalize() for part in command.split("-"))
        assert operation in session.get_service_model(service).operation_names, f"aws {service} {command}"


def test_make_deploy_dry_run(tmp_path: Path) -> None:
    """`make -n` of the deploy and destroy steps, as the top-level Makefile will include them."""
    combined = tmp_path / "Makefile"
    combined.write_text(f"include {ROOT / 'Makefile'}\ninclude {DEPLOY_MK}\n")
    for target in ("deploy-stack", "deploy-image", "deploy-config", "deploy-lambda", "destroy"):
        result = subprocess.run(
            ["make", "-n", "-f", str(combined), target, "STAGE=dev", "BIN=.venv/bin", "IMAGE_TAG=t"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        for path in re.findall(
            r"(?:infra|ecs_tasks)/[\w./-]+\.(?:py|mk|txt)|ecs_tasks/Dockerfile|pipeline\.yaml", result.stdout
        ):
            assert (ROOT / path).exists(), (target, path)
