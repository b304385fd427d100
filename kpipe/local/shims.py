"""Compatibility shims for moto 5.2's Step Functions interpreter: the gaps between it and AWS that the
pipeline's definitions run into, and nothing else. Local-run code only (never imported by the Lambda or
the tasks); `install()` is idempotent and is called by the embedded emulator and by the tests.

1. Service integrations pass the ASL's parameters to boto3 unchanged. AWS's integrations take the API's
   members in PascalCase (`Cluster`, `TaskDefinition`, `Overrides.ContainerOverrides[].Environment`) and
   answer in PascalCase; moto stubbed out the normalisation (LocalStack's `_normalise_parameters` /
   `_normalise_response`), so `ecs:runTask` fails with a KeyError in botocore's serializer and the
   `aws-sdk:*` integrations of camelCase APIs (Step Functions itself) likewise. We restore it for the
   ECS and aws-sdk integrations, driven by botocore's service model. DynamoDB needs none: its API is
   PascalCase already.
2. CloudFormation's `AWS::StepFunctions::StateMachine` ignores `DefinitionSubstitutions` and registers
   the state machine with the plain backend, not with the executing one that
   `{"stepfunctions": {"execute_state_machine": true}}` switches the API to, so a stack-created state
   machine is invisible to StartExecution. We apply the substitutions and register it where the API
   looks (same name, hence the same ARN as the stack output).
3. `SendTaskFailure` drops the `cause` (moto's response handler passes only the error), so a failed
   task's explanation would never reach the Catch and the report. We pass it on.
4. A task token is answered into moto's callback endpoint, which loses the answer or replays a stale one:
   (a) the heartbeat wait is set up only after `ecs:runTask` returns, so an answer that arrives first
   wakes nobody and the state sleeps through `HeartbeatSeconds`, then times out although the task
   finished long before (a task that answers within milliseconds hits it: a rare hang in CI);
   (b) every retry of a state reuses its token and endpoint, so a retry would see the previous attempt's
   answer. Each attempt now starts with a clean endpoint, and a heartbeat wait set up after this
   attempt's answer starts out notified.
5. moto's backends are plain dicts with no locking, and the interpreter makes boto3 clients from the
   shared default session, which boto3 documents as unsafe across threads. A Map state's iterations
   call `ecs:runTask` from several threads while the local agent lists and stops tasks: CI once saw
   "dictionary changed size during iteration" fail a recompute task. Clients for the interpreter are
   made under a lock and reused (clients themselves are thread-safe), and the ECS backend's task
   methods run one at a time.
6. S3's ListObjectVersions deep-copies every version of every object in the bucket, contents
   included, before it filters by prefix (it marks the copies `IsLatest`). The trigger lists
   `raw-data/` on every S3 event, so a batch of 81 files copied the whole bucket 81 times: `kpipe
   run` of a 1.3M-row batch in 40 files a dataset took 50 s and 7 GB. The copies now share nothing
   with the originals but what the listing reads (name, ETag computed once, size, dates, version).
7. StartExecution checks that no execution has the name, then deep-copies the state machine, then
   registers the new execution: two concurrent calls with one name can both pass the check (the
   deep copy is a wide window), where AWS refuses the second with ExecutionAlreadyExists. The trigger
   relies on exactly that refusal for duplicate S3 events; the event-storm test saw two executions
   start once in ~25 runs. StartExecution now runs one call at a time.
8. CloudFormation's `AWS::DynamoDB::Table` has no update: a table whose properties changed (a new name,
   a new key, a GSI more) is dropped from the stack, untouched, and no new one is created; and a stack
   update deletes a resource removed from the template whatever its DeletionPolicy. The KPI tables follow
   pipeline.yaml, so both happen when a table is renamed, re-keyed or dropped. Tables now update as
   CloudFormation does: a new name or key schema creates the new table, and the old one is kept under
   UpdateReplacePolicy Retain (deleted otherwise); other changes (GSIs, attribute definitions) apply in
   place. A resource removed by an update is kept when its DeletionPolicy is Retain.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

_lock = threading.Lock()
_installed = False


# --------------------------------------------------------------------------------------------------
# 1. PascalCase service integrations


@functools.cache
def _operation_model(service: str, snake_action: str) -> Any | None:
    """botocore's model of `service`'s operation whose snake_case name is `snake_action` (None if unknown)."""
    import botocore.session
    from botocore import xform_name

    try:
        model = botocore.session.get_session().get_service_model(service)
    except Exception:  # unknown service: leave the parameters alone, the call will fail with a clear error
        return None
    for name in model.operation_names:
        if xform_name(name) == snake_action:
            return model.operation_model(name)
    return None


def _normalise_parameters(
    self: Any, parameters: dict, boto_service_name: str | None = None, service_action_name: str | None = None
) -> None:
    op = _operation_model(
        self._get_boto_service_name(boto_service_name=boto_service_name),
        self._get_boto_service_action(service_action_name=service_action_name),
    )
    if op is not None and op.input_shape is not None:
        self._to_boto_request(parameters, op.input_shape)


def _normalise_response(
    self: Any, response: Any, boto_service_name: str | None = None, service_action_name: str | None = None
) -> None:
    op = _operation_model(
        self._get_boto_service_name(boto_service_name=boto_service_name),
        self._get_boto_service_action(service_action_name=service_action_name),
    )
    if op is not None and op.output_shape is not None:
        self._from_boto_response(response, op.output_shape)


def _patch_integrations() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_aws_sdk as aws_sdk,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_ecs as ecs,
    )

    for cls in (ecs.StateTaskServiceEcs, aws_sdk.StateTaskServiceAwsSdk):
        cls._normalise_parameters = _normalise_parameters  # type: ignore[method-assign]
        cls._normalise_response = _normalise_response  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------------
# 2. CloudFormation state machines: substitutions, and the executing backend

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def substitute(definition: str, substitutions: dict[str, Any] | None) -> str:
    """Apply `DefinitionSubstitutions` as AWS does: each `${Key}` with a given key becomes its value.

    >>> substitute('{"Cluster": "${ClusterArn}", "Other": "${Unknown}"}', {"ClusterArn": "arn:c"})
    '{"Cluster": "arn:c", "Other": "${Unknown}"}'
    """
    if not substitutions:
        return definition
    return _PLACEHOLDER.sub(lambda m: str(substitutions.get(m.group(1), m.group(0))), definition)


def _executing_backend(account_id: str, region_name: str) -> Any:
    from moto.stepfunctions.responses import get_backend

    return get_backend(account_id, region_name)


def _patch_cloudformation() -> None:
    from moto.stepfunctions import models

    cls = models.StateMachine

    def create_from_cloudformation_json(
        klass: Any, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> Any:
        props = cloudformation_json["Properties"]
        name = props.get("StateMachineName", resource_name)
        definition = substitute(props.get("DefinitionString", ""), props.get("DefinitionSubstitutions"))
        tags = models.cfn_to_api_tags(props.get("Tags", []))
        backend = _executing_backend(account_id, region_name)
        return backend.create_state_machine(name, definition, props.get("RoleArn", ""), tags=tags)

    def delete_from_cloudformation_json(
        klass: Any, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> None:
        _executing_backend(account_id, region_name).delete_state_machine(resource_name)

    def update_from_cloudformation_json(
        klass: Any, original_resource: Any, new_resource_name: str, cloudformation_json: Any,
        account_id: str, region_name: str,
    ) -> Any:
        props = cloudformation_json.get("Properties", {})
        name = props.get("StateMachineName", original_resource.name)
        if name != original_resource.name:
            new = klass.create_from_cloudformation_json(name, cloudformation_json, account_id, region_name)
            klass.delete_from_cloudformation_json(original_resource.arn, cloudformation_json, account_id, region_name)
            return new
        definition = substitute(props.get("DefinitionString", ""), props.get("DefinitionSubstitutions"))
        backend = _executing_backend(account_id, region_name)
        machine = backend.update_state_machine(original_resource.arn, definition=definition, role_arn=props.get("RoleArn"))
        backend.tagger.tag_resource(machine.arn, models.cfn_to_api_tags(props.get("Tags", [])))
        return machine

    cls.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[assignment]
    cls.delete_from_cloudformation_json = classmethod(delete_from_cloudformation_json)  # type: ignore[assignment]
    cls.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# 3. SendTaskFailure: the response handler drops `cause`


def _patch_send_task_failure() -> None:
    from moto.core.responses import EmptyResult
    from moto.stepfunctions.responses import StepFunctionResponse

    def send_task_failure(self: Any) -> Any:
        self.stepfunction_backend.send_task_failure(
            self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
        )
        return EmptyResult()

    StepFunctionResponse.send_task_failure = send_task_failure  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------------
# 4. Task tokens: an early answer is not lost, a retry does not see the last attempt's answer


def _patch_callback_endpoint() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_callback as callback,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import ResourceCondition
    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint, HeartbeatEndpoint

    cls = callback.StateTaskServiceCallback
    parent_before = super(cls, cls)._before_eval_execution  # type: ignore[misc]

    def _before_eval_execution(self: Any, env: Any, **kwargs: Any) -> None:
        parent_before(self, env=env, **kwargs)
        if self.resource.condition == ResourceCondition.WaitForTaskToken:
            endpoint = env.callback_pool_manager.get(env.states.context_object.context_object_data["Task"]["Token"])
            if endpoint is not None:  # a fresh attempt: forget the last one's answer
                endpoint._outcome = None
                endpoint._notify_event.clear()
                endpoint._heartbeat_endpoint = None

    original_setup = CallbackEndpoint.setup_heartbeat_endpoint

    def setup_heartbeat_endpoint(self: Any, heartbeat_seconds: int) -> HeartbeatEndpoint:
        endpoint = original_setup(self, heartbeat_seconds)
        # `notify` stores the outcome before it looks for a heartbeat endpoint, so either it saw this one
        # or this sees its outcome.
        if self.get_outcome() is not None:
            endpoint.notify()
        return endpoint

    cls._before_eval_execution = _before_eval_execution  # type: ignore[method-assign]
    CallbackEndpoint.setup_heartbeat_endpoint = setup_heartbeat_endpoint  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------------
# 5. Concurrent Map iterations: the interpreter's clients and the ECS backend's task table

_INTERPRETER_CLIENT_USERS = ("state_task_service_ecs", "state_task_service_aws_sdk", "state_task_service_dynamodb")
_ECS_TASK_METHODS = ("run_task", "start_task", "describe_tasks", "list_tasks", "stop_task")


def _patch_concurrency() -> None:
    import importlib

    from moto.ecs.models import EC2ContainerServiceBackend
    from moto.stepfunctions.parser.asl.utils import boto_client

    clients: dict[tuple[Any, ...], Any] = {}
    clients_lock = threading.Lock()
    make_client = boto_client.boto_client_for

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        # moto's own key: where its calls go (in-process stubber or the server's port) and for whom.
        key = (region, service, boto_client.botocore_stubber.enabled, boto_client.moto_server_port(), repr(state_credentials))
        with clients_lock:
            if key not in clients:
                clients[key] = make_client(region, service, state_credentials)
            return clients[key]

    for name in _INTERPRETER_CLIENT_USERS:
        module = importlib.import_module(f"moto.stepfunctions.parser.asl.component.state.exec.state_task.service.{name}")
        module.boto_client_for = boto_client_for  # type: ignore[attr-defined]

    tasks_lock = threading.RLock()

    def serialised(method: Any) -> Any:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with tasks_lock:
                return method(self, *args, **kwargs)

        return call

    for name in _ECS_TASK_METHODS:
        setattr(EC2ContainerServiceBackend, name, serialised(getattr(EC2ContainerServiceBackend, name)))


def _patch_start_execution() -> None:
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    start = StepFunctionsParserBackend.start_execution
    start_lock = threading.Lock()

    @functools.wraps(start)
    def start_execution(self: Any, *args: Any, **kwargs: Any) -> Any:
        with start_lock:  # the name check and the registration, atomic as on AWS
            return start(self, *args, **kwargs)

    StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign]


def _patch_s3_version_listing() -> None:
    import copy
    import io
    import types

    from moto.s3 import models

    def listing_copy(versions: list[Any]) -> list[Any]:
        """`copy.deepcopy` of one key's versions as ListObjectVersions uses them: marked `is_latest`
        and read, never written. A key's copy gets an empty buffer of its own (a FakeKey closes its
        buffer when collected; sharing it would close the original's)."""
        copies = []
        for version in versions:
            if isinstance(version, models.FakeKey):
                _ = version.etag  # computed once from the bytes, on the original
                light = object.__new__(models.FakeKey)
                light.__dict__.update(version.__dict__)
                light._value_buffer = io.BytesIO()
                light.disposed = True
                copies.append(light)
            else:  # a delete marker: no contents
                copies.append(copy.copy(version))
        return copies

    # the module's only deepcopy is that listing's; its copy.copy stays the real one
    models.copy = types.SimpleNamespace(deepcopy=listing_copy, copy=copy.copy)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# 8. DynamoDB tables in stack updates


def _key_schema(schema: Any) -> list[tuple[str, str]]:
    return [(k["AttributeName"], k["KeyType"]) for k in schema or []]


def _attribute_types(definitions: Any, names: list[str]) -> list[str | None]:
    types = {d["AttributeName"]: d["AttributeType"] for d in definitions or []}
    return [types.get(n) for n in names]


def _patch_dynamodb_tables() -> None:
    from moto.cloudformation import parsing
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.table import Table

    def update_from_cloudformation_json(
        klass: Any, original_resource: Any, new_resource_name: str, cloudformation_json: Any,
        account_id: str, region_name: str,
    ) -> Any:
        props = cloudformation_json.get("Properties", {})
        backend = dynamodb_backends[account_id][region_name]
        old_key, new_key = _key_schema(original_resource.schema), _key_schema(props.get("KeySchema"))
        names = [n for n, _ in new_key]
        same_key = old_key == new_key and _attribute_types(original_resource.attr, names) == _attribute_types(
            props.get("AttributeDefinitions"), names
        )
        if new_resource_name != original_resource.name or not same_key:  # a replacement
            new = klass.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)
            if cloudformation_json.get("UpdateReplacePolicy") != "Retain":
                backend.delete_table(name=original_resource.name)
            return new
        wanted = {g["IndexName"]: g for g in props.get("GlobalSecondaryIndexes", [])}
        have = {g.name: g for g in original_resource.global_indexes}
        updates: list[dict[str, Any]] = [{"Delete": {"IndexName": n}} for n in have if n not in wanted]
        updates += [{"Create": g} for n, g in wanted.items() if n not in have]
        backend.update_table(
            name=original_resource.name,
            attr_definitions=props.get("AttributeDefinitions"),
            global_index=updates,
            throughput=None,
            billing_mode=None,
            stream_spec=None,
            deletion_protection_enabled=None,
            warm_throughput=None,
        )
        return original_resource

    Table.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)  # type: ignore[assignment]

    delete_resource = parsing.ResourceMap._delete_resource

    def _delete_resource(self: Any, parsed_resource: Any, resource_json: dict[str, Any]) -> None:
        if resource_json.get("DeletionPolicy") == "Retain":  # (a stack deletion never gets here with one)
            return
        delete_resource(self, parsed_resource, resource_json)

    parsing.ResourceMap._delete_resource = _delete_resource  # type: ignore[method-assign]


def install() -> None:
    """Apply every shim once per process (the moto server runs in-process, so this covers it too)."""
    global _installed
    with _lock:
        if _installed:
            return
        _patch_integrations()
        _patch_cloudformation()
        _patch_send_task_failure()
        _patch_callback_endpoint()
        _patch_concurrency()
        _patch_s3_version_listing()
        _patch_start_execution()
        _patch_dynamodb_tables()
        _installed = True
