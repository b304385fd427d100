"""The pipeline's AWS resources on the emulator, from the same CloudFormation template a deploy uses.

What `make deploy` takes as given (a VPC with two subnets and a security group) is created first, as an
account would have it; then `kpipe.infra.deploy_stack` deploys `infra/template.yaml` (with the state
machine from `stepfunctions/pipeline.asl.json`) into moto's CloudFormation, and the stack outputs name
everything. The one local addition: the bucket's ObjectCreated notifications go to an SQS queue, which
the pump hands to the Chalice handler (moto delivers S3 -> Lambda only through Docker).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STACK_NAME = "kpipe-local"
BUCKET_NAME = "kpipe-local"
QUEUE_NAME = "kpipe-local-s3-events"

ClientFactory = Callable[[str], Any]


@dataclass(frozen=True)
class Resources:
    """The stack outputs (docs/contracts.md names) plus the local event queue."""

    outputs: dict[str, str]
    queue_url: str
    network: dict[str, str] = field(default_factory=dict)

    @property
    def bucket(self) -> str:
        return self.outputs["BucketName"]

    @property
    def state_machine_arn(self) -> str:
        return self.outputs["StateMachineArn"]

    @property
    def cluster_arn(self) -> str:
        return self.outputs["ClusterArn"]

    @property
    def kpi_tables(self) -> dict[str, str]:
        """Every KPI table of the stack: logical name (pipeline.yaml) -> table name (the `KpiTables` output)."""
        return dict(json.loads(self.outputs["KpiTables"]))

    def task_environment(self) -> dict[str, str]:
        """The Lambda's and the tasks' runtime environment (docs/contracts.md)."""
        return {
            "KPIPE_BUCKET": self.bucket,
            "KPIPE_STATE_MACHINE_ARN": self.state_machine_arn,
            "KPIPE_KPI_TABLES": self.outputs["KpiTables"],
            "KPIPE_CONTROL_TABLE": self.outputs["ControlTableName"],
            "KPIPE_CONFIG_KEY": "config/pipeline.yaml",
        }


def create_network(ec2: Any) -> dict[str, str]:
    """A VPC with DNS hostnames (moto's awsvpc tasks need them), two subnets and a security group."""
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsSupport={"Value": True})
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:2]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for i, zone in enumerate(zones, start=1)
    ]
    sg = ec2.create_security_group(GroupName="kpipe-tasks", Description="kpipe Fargate tasks", VpcId=vpc)["GroupId"]
    return {"VpcId": vpc, "SubnetA": subnets[0], "SubnetB": subnets[-1], "SecurityGroupId": sg}


def notify_queue(s3: Any, sqs: Any, bucket: str, raw_prefix: str = "raw-data/", queue_name: str = QUEUE_NAME) -> str:
    """Send the bucket's ObjectCreated events under `raw_prefix` to an SQS queue; return its URL."""
    queue_url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "raw-data-to-pump",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": raw_prefix}]}},
                }
            ]
        },
    )
    return queue_url


def create_resources(
    client: ClientFactory,
    *,
    cfg: Any = None,
    stack_name: str = STACK_NAME,
    bucket: str = BUCKET_NAME,
    raw_prefix: str = "raw-data/",
) -> Resources:
    """Network, then the stack (bucket, the KPI tables of `cfg` (a PipelineConfig; default: the project's
    pipeline.yaml), control table, cluster, task definitions, state machine), then the queue."""
    from kpipe.infra import deploy_stack

    network = create_network(client("ec2"))
    outputs = deploy_stack(
        client("cloudformation"),
        stack_name,
        {
            "BucketName": bucket,
            "SubnetA": network["SubnetA"],
            "SubnetB": network["SubnetB"],
            "SecurityGroupId": network["SecurityGroupId"],
        },
        target="emulator",
        cfg=cfg,
        poll_seconds=0.1,
    )
    queue_url = notify_queue(client("s3"), client("sqs"), outputs["BucketName"], raw_prefix)
    return Resources(outputs=outputs, queue_url=queue_url, network=network)
