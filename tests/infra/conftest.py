"""Fixtures of the infra tests: the state machine definition, its rendering, a moto-deployed stack."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from kpipe import infra
from tests.infra.support import REGION, STACK_NAME, STAND_IN_ASL


@pytest.fixture(scope="session")
def asl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    real = infra.ASL_PATH
    if real.exists():
        return real
    path = tmp_path_factory.mktemp("asl") / "pipeline.asl.json"
    path.write_text(json.dumps(STAND_IN_ASL, indent=2))
    return path


@pytest.fixture(scope="session")
def rendered(asl_path: Path) -> dict[str, Any]:
    """The AWS rendering (DefinitionString + DefinitionSubstitutions) as a dict."""
    return infra.render_template_dict(asl_path=asl_path)


@pytest.fixture(scope="module")
def moto_stack(asl_path: Path) -> Iterator[dict[str, Any]]:
    """The rendered template deployed into moto's CloudFormation, as the local emulator does it.

    Yields {"outputs", "params", "clients"}; the mock stays active for the whole module."""
    with mock_aws():
        clients = {
            name: boto3.client(name, region_name=REGION)
            for name in ("cloudformation", "s3", "dynamodb", "ecs", "stepfunctions", "logs", "sns", "ecr", "iam")
        }
        # Literal ids: CloudFormation only passes them on (moto does not check them), and building a VPC in
        # moto costs seconds of EC2 backend loading.
        subnets, sg = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"], "sg-0ccccccccccccccc3"
        params = {
            "SubnetA": subnets[0],
            "SubnetB": subnets[1],
            "SecurityGroupId": sg,
            "AlarmEmail": "ops@example.com",
        }
        outputs = infra.deploy_stack(clients["cloudformation"], STACK_NAME, params, asl_path=asl_path, poll_seconds=0)
        yield {"outputs": outputs, "params": params, "clients": clients, "asl_path": asl_path}
