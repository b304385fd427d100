"""Render and deploy `infra/template.yaml`: one code path for `make deploy` (real AWS) and for the
local emulator (moto's CloudFormation), so the emulator runs on the very resources the template
declares instead of a hand-written copy.

Why rendering at all: the state machine lives in `stepfunctions/pipeline.asl.json`, run as is
locally and on AWS. The template carries only a marker where the definition goes plus the
`DefinitionSubstitutions` that map the ASL's `${Placeholder}`s to `!Ref`/`!GetAtt`s; rendering
inlines the ASL (whitespace-compacted), so no copy of the definition ever exists to drift. And the KPI
tables are pipeline.yaml's: rendering adds one `AWS::DynamoDB::Table` per `kpis:` table, shaped by
`chalicelib.kpi_tables` (keys, types, GSIs), named `<KpiTablePrefix><table>`, kept on deletion and on
replacement (DeletionPolicy / UpdateReplacePolicy Retain), and fills the markers the template holds
for them: the tasks' IAM resources and the `KPIPE_KPI_TABLES` mapping (task environment and output).

Deploying over an existing stack compares the KPI tables with the deployed template (`get_template`):
a table renamed (its name in pipeline.yaml, or the prefix) or re-keyed gets a new table, and the old
one stays, holding its data; each such change is stated (`notice`), never silent. A re-keyed table
whose name would not change is named `<name>-<6 hex digits of its key schema>`, because CloudFormation
cannot replace a named resource under the same name.

moto gaps handled here (measured against moto 5.2.5; tests/infra pins each one):
- `AWS::StepFunctions::StateMachine` ignores `DefinitionSubstitutions`, and a stack update does not
  re-resolve resources that merely depend on a changed one (new task definition revisions leave the
  state machine as it was). The emulator's copy of the template therefore also outputs every
  substitution expression (`KpipeSubstitution<Key>`), so moto's CloudFormation evaluates exactly the
  `!Ref`/`!GetAtt`s AWS would; after each create or update the definition is set to the ASL with
  those values substituted, as Step Functions does. (Neither `Fn::Sub`'s list form, which moto runs
  through `string.Template` and so turns `$$.Task.Token` into `$.Task.Token`, nor an `Fn::Join`,
  which moto would not refresh on update, gives that.)
- `AWS::S3::Bucket` keeps only the encryption, and `AWS::DynamoDB::Table` drops point-in-time
  recovery. After an emulated deploy the bucket's versioning (the manifest pins object versions),
  public access block, ownership controls and lifecycle rules, and the tables' PITR are applied
  through the service APIs from the same template properties.
- moto names an unnamed `AWS::ECR::Repository` with upper-case letters, which its own ECR then
  refuses; the emulator's copy names it `<stack>-taskrepository` (AWS generates a valid name).
- moto's task definition *update* keeps CloudFormation's PascalCase container keys (no `image`,
  `command` afterwards); the emulator's copy writes them in camelCase, which both paths keep.
- moto's stack update treats a parameter it was not given at creation as changed, re-creates the
  resources that reference it and drops tables and log groups (no update support) from the stack;
  emulated updates therefore pass only the parameters that differ from their defaults.
- moto's CloudFormation cannot update a table (a changed table, or one referencing a parameter it
  thinks changed, is dropped from the stack untouched) and deletes a resource removed from the
  template whatever its DeletionPolicy; `kpipe.local.shims` (installed by the emulator) gives tables
  CloudFormation's update semantics (replacement on a new name or key schema, the old one retained
  under UpdateReplacePolicy Retain; GSIs changed in place) and honours Retain on removal.
- Not created by moto (it skips them with a warning; nothing in the pipeline's data path uses them):
  `AWS::S3::BucketPolicy`, `AWS::Logs::MetricFilter`, `AWS::CloudWatch::Alarm`. moto's ECS task
  definitions keep family, containers and memory but not the task-level cpu, network mode or roles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml

from chalicelib.config import PipelineConfig, default_config_path, load_config
from chalicelib.kpi_tables import TableShape, table_shapes

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = ROOT / "infra" / "template.yaml"
ASL_PATH = ROOT / "stepfunctions" / "pipeline.asl.json"
STATE_MACHINE_ID = "PipelineStateMachine"
ASL_MARKER = "@@KPIPE_ASL@@"
# Emulator-only outputs carrying the evaluated DefinitionSubstitutions (stripped from what callers get).
SUBSTITUTION_OUTPUT = "KpipeSubstitution"
# CloudFormation's limit for an inline TemplateBody.
MAX_TEMPLATE_BODY = 51_200
# The KPI tables (see the module doc).
KPI_TABLE_PREFIX = "KpiTablePrefix"
KPI_METADATA = "KpipeKpiTable"  # Metadata key of a rendered KPI table: its name in pipeline.yaml
# The two tables of the default pipeline keep the logical ids and name parameters stacks were deployed with.
LEGACY_LOGICAL_IDS = {"OrderKPI": "OrderKpiTable", "CategoryKPI": "CategoryKpiTable"}
LEGACY_NAME_PARAMETERS = {"OrderKPI": "OrderTableName", "CategoryKPI": "CategoryTableName"}
MARKER_TABLES = "@@KPIPE_KPI_TABLES@@"
MARKER_INDEXES = "@@KPIPE_KPI_INDEXES@@"
MARKER_TABLE_ARNS = "@@KPIPE_KPI_TABLE_ARNS@@"
MARKER_INDEX_ARNS = "@@KPIPE_KPI_INDEX_ARNS@@"

Target = Literal["auto", "aws", "emulator"]

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
_TERMINAL_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}


class DeployError(RuntimeError):
    """The stack did not reach a complete state; the message carries CloudFormation's reasons."""


# ------------------------------------------------------------------------------------------------
# Template loading (CloudFormation YAML short forms -> long forms)
# ------------------------------------------------------------------------------------------------
class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that understands `!Ref`, `!GetAtt`, `!Sub` ... and yields the JSON long forms."""


def _construct(tag: str) -> Callable[[yaml.SafeLoader, yaml.Node], Any]:
    fn = "Ref" if tag == "Ref" else ("Condition" if tag == "Condition" else f"Fn::{tag}")

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if tag == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {fn: value}

    return construct


for _tag in (
    "Ref", "Condition", "GetAtt", "Sub", "Join", "If", "Equals", "Not", "And", "Or", "Select",
    "Split", "FindInMap", "Base64", "GetAZs", "ImportValue", "Cidr", "ToJsonString", "Length",
):  # fmt: skip
    _CfnLoader.add_constructor(f"!{_tag}", _construct(_tag))


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as a plain dict with long-form intrinsics (anchors expanded)."""
    return yaml.load(Path(path).read_text(), Loader=_CfnLoader)


# ------------------------------------------------------------------------------------------------
# Substitutions
# ------------------------------------------------------------------------------------------------
def placeholders(asl_text: str) -> set[str]:
    """The `${Name}` placeholders an ASL text uses."""
    return set(_PLACEHOLDER.findall(asl_text))


def apply_substitutions(asl_text: str, values: Mapping[str, str]) -> str:
    """What Step Functions does with `DefinitionSubstitutions`: replace each `${key}` by its value,
    leave everything else (including `$$.` context paths) untouched."""
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), asl_text)


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------
def _config(cfg: PipelineConfig | str | Path | None) -> PipelineConfig:
    if isinstance(cfg, PipelineConfig):
        return cfg
    return load_config(cfg if cfg is not None else default_config_path())


def render_template_dict(
    template_path: Path = TEMPLATE_PATH,
    asl_path: Path = ASL_PATH,
    cfg: PipelineConfig | str | Path | None = None,
    *,
    name_suffixes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The deployable template as a dict: `DefinitionString` is the ASL, `DefinitionSubstitutions` as
    written in the template (which must substitute every placeholder the ASL uses), and the KPI tables of
    `cfg` (a PipelineConfig or a path; default: the project's pipeline.yaml) with their IAM grants and
    names. `name_suffixes` (table -> suffix) renames re-keyed tables (`deploy_stack` decides)."""
    template = load_template(template_path)
    add_kpi_tables(template, _config(cfg), name_suffixes or {})
    asl_text = compact_asl(Path(asl_path).read_text())  # a broken definition fails here, not mid-deployment
    sm = template["Resources"][STATE_MACHINE_ID]["Properties"]
    if sm.get("DefinitionString") != ASL_MARKER:
        raise ValueError(f"{template_path}: {STATE_MACHINE_ID}.DefinitionString must be the marker {ASL_MARKER!r}")
    missing = placeholders(asl_text) - set(sm["DefinitionSubstitutions"])
    if missing:
        raise ValueError(
            f"{asl_path} uses placeholders the template does not substitute: {sorted(missing)}; "
            f"add them to {STATE_MACHINE_ID}.DefinitionSubstitutions in {template_path}"
        )
    sm["DefinitionString"] = asl_text
    return template


def render_template(
    template_path: Path = TEMPLATE_PATH, asl_path: Path = ASL_PATH, cfg: PipelineConfig | str | Path | None = None
) -> str:
    """The deployable template as compact JSON (CloudFormation caps an inline body at 51,200 bytes)."""
    return json.dumps(render_template_dict(template_path, asl_path, cfg), separators=(",", ":"))


# ------------------------------------------------------------------------------------------------
# KPI tables
# ------------------------------------------------------------------------------------------------
def kpi_logical_id(name: str) -> str:
    """The CloudFormation logical id of a KPI table (alphanumeric; the default tables keep theirs)."""
    if name in LEGACY_LOGICAL_IDS:
        return LEGACY_LOGICAL_IDS[name]
    alnum = re.sub(r"[^A-Za-z0-9]", "", name)
    tag = "" if alnum == name else hashlib.sha256(name.encode()).hexdigest()[:6]  # `a_b` and `ab` stay apart
    return f"Kpi{alnum[:1].upper()}{alnum[1:]}{tag}Table"


def kpi_name_expression(name: str, suffix: str = "") -> Any:
    """The table's TableName: `<KpiTablePrefix><name><suffix>`; for OrderKPI/CategoryKPI their own name
    parameter when it is set."""
    prefixed = {"Fn::Sub": f"${{{KPI_TABLE_PREFIX}}}{name}{suffix}"}
    if name not in LEGACY_NAME_PARAMETERS:
        return prefixed
    param = LEGACY_NAME_PARAMETERS[name]
    named = {"Ref": param} if not suffix else {"Fn::Sub": f"${{{param}}}{suffix}"}
    return {"Fn::If": [f"Has{param}", named, prefixed]}


def kpi_physical_name(name: str, parameters: Mapping[str, str], suffix: str = "") -> str:
    """What `kpi_name_expression` evaluates to under these stack parameters (missing ones: their default, "")."""
    legacy = LEGACY_NAME_PARAMETERS.get(name)
    if legacy and parameters.get(legacy):
        return f"{parameters[legacy]}{suffix}"
    return f"{parameters.get(KPI_TABLE_PREFIX, '')}{name}{suffix}"


def rekey_suffix(shape: TableShape) -> str:
    """The suffix a re-keyed table's name gets: 6 hex digits of its key schema (the same schema, the same name)."""
    return "-" + hashlib.sha256(json.dumps(shape.key_signature()).encode()).hexdigest()[:6]


def kpi_table_resource(shape: TableShape, suffix: str = "") -> dict[str, Any]:
    props: dict[str, Any] = {
        "TableName": kpi_name_expression(shape.name, suffix),
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": shape.attribute_definitions(),
        "KeySchema": shape.key_schema(),
    }
    if shape.indexes:
        props["GlobalSecondaryIndexes"] = shape.index_definitions()
    props["PointInTimeRecoverySpecification"] = {"PointInTimeRecoveryEnabled": True}
    props["SSESpecification"] = {"SSEEnabled": True}
    return {
        "Type": "AWS::DynamoDB::Table",
        # A KPI table outlives the stack and a replacement: renaming or re-keying one (or `make destroy`)
        # leaves the old table, and its data, in place.
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Metadata": {KPI_METADATA: shape.name},
        "Properties": props,
    }


def _names_json(shapes: Mapping[str, Any]) -> Any:
    """`{"OrderKPI":"<its name>",...}` as an Fn::Sub of the tables' Refs (the names have no quote to escape)."""
    return {"Fn::Sub": "{" + ",".join(f'{json.dumps(n)}:"${{{kpi_logical_id(n)}}}"' for n in shapes) + "}"}


def add_kpi_tables(template: dict[str, Any], cfg: PipelineConfig, name_suffixes: Mapping[str, str]) -> None:
    """Add `cfg`'s KPI tables to a loaded template and fill its KPI markers (see the module doc)."""
    shapes = table_shapes(cfg)
    resources = template["Resources"]
    ids = {name: kpi_logical_id(name) for name in shapes}
    clash = sorted({i for i in ids.values() if list(ids.values()).count(i) > 1} | (set(ids.values()) & set(resources)))
    if clash:
        raise ValueError(f"KPI tables {sorted(n for n, i in ids.items() if i in clash)} map to the logical ids {clash}; rename one")
    tables = {ids[name]: kpi_table_resource(shape, name_suffixes.get(name, "")) for name, shape in shapes.items()}
    before = "ControlTable" if "ControlTable" in resources else None  # the storage section, in reading order
    ordered: dict[str, Any] = {}
    for logical_id, resource in resources.items():
        if logical_id == before:
            ordered.update(tables)
        ordered[logical_id] = resource
    if before is None:
        ordered.update(tables)
    template["Resources"] = resources = ordered
    for name, param in LEGACY_NAME_PARAMETERS.items():
        if name in shapes:
            template["Parameters"][param] = {
                "Type": "String",
                "Default": "",
                "Description": f"Name of the {name} table; empty: <{KPI_TABLE_PREFIX}>{name}. Kept for stacks deployed before the prefix.",
            }
            template.setdefault("Conditions", {})[f"Has{param}"] = {"Fn::Not": [{"Fn::Equals": [{"Ref": param}, ""]}]}
            template["Outputs"][param] = {"Description": f"The {name} table.", "Value": {"Ref": ids[name]}}
    table_arns = [{"Fn::GetAtt": [ids[n], "Arn"]} for n in shapes]
    index_arns = [
        {"Fn::Sub": f"${{{ids[n]}.Arn}}/index/{index.name}"} for n, shape in shapes.items() for index in shape.indexes
    ]
    indexes = json.dumps({n: [i.name for i in shape.indexes] for n, shape in shapes.items()}, separators=(",", ":"))
    values = {MARKER_TABLES: _names_json(shapes), MARKER_INDEXES: indexes, MARKER_TABLE_ARNS: table_arns,
              MARKER_INDEX_ARNS: index_arns}
    _fill_markers(template, values)
    left = [m for m in values if m in json.dumps(template)]
    if left:
        raise ValueError(f"markers {left} left in the rendered template")


def _fill_markers(node: Any, values: Mapping[str, Any]) -> Any:
    """Replace every marker string by its value, in place; drop an IAM statement whose Resource is an empty list."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            node[key] = values[value] if isinstance(value, str) and value in values else _fill_markers(value, values)
        if isinstance(node.get("Statement"), list):
            node["Statement"] = [st for st in node["Statement"] if st.get("Resource") != []]
    elif isinstance(node, list):
        for i, value in enumerate(node):
            node[i] = values[value] if isinstance(value, str) and value in values else _fill_markers(value, values)
    return node


@dataclass(frozen=True)
class TableChange:
    """What a deployment does to one KPI table of an existing stack (stated by `deploy_stack`)."""

    table: str
    new_name: str | None  # None: the table left pipeline.yaml
    old_name: str | None  # None: a table new to the stack
    retained: bool = True  # the old table is kept (DeletionPolicy/UpdateReplacePolicy Retain)
    rekeyed: bool = False

    def message(self) -> str:
        if self.old_name is None:
            return f"{self.table}: new table {self.new_name} created"
        if self.new_name is None:
            kept = "is retained (DeletionPolicy Retain)" if self.retained else "is deleted (the deployed stack's DeletionPolicy is Delete)"
            return f"{self.table}: not in pipeline.yaml any more; its table {self.old_name} {kept}"
        why = " (its key changed)" if self.rekeyed else ""
        return f"{self.table}: new table {self.new_name} created{why}; the old table {self.old_name} is retained (DeletionPolicy Retain)"


def _deployed_kpi_tables(template: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """KPI table name -> (logical id, resource) of a deployed template (rendered by this module, or older)."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    legacy = {v: k for k, v in LEGACY_LOGICAL_IDS.items()}
    for logical_id, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::DynamoDB::Table":
            continue
        name = (resource.get("Metadata") or {}).get(KPI_METADATA) or legacy.get(logical_id)
        if name:
            found[name] = (logical_id, resource)
    return found


def _key_signature(resource: Mapping[str, Any]) -> tuple[tuple[str, str, str], ...]:
    props = resource.get("Properties") or {}
    types = {a["AttributeName"]: a["AttributeType"] for a in props.get("AttributeDefinitions", [])}
    return tuple((k["AttributeName"], k["KeyType"], types.get(k["AttributeName"], "S")) for k in props.get("KeySchema", []))


def plan_kpi_tables(
    cfg: PipelineConfig,
    deployed_template: Mapping[str, Any],
    deployed_names: Mapping[str, str],
    parameters: Mapping[str, str],
) -> tuple[dict[str, str], list[TableChange]]:
    """(name suffixes for `render_template_dict`, the changes to state) of deploying `cfg` over a stack
    whose template is `deployed_template`, its resources' physical ids `deployed_names` (logical id ->
    name) and its parameters, once updated, `parameters`."""
    shapes = table_shapes(cfg)
    old = _deployed_kpi_tables(deployed_template)
    suffixes: dict[str, str] = {}
    changes: list[TableChange] = []
    for name, shape in shapes.items():
        if name not in old:
            changes.append(TableChange(name, kpi_physical_name(name, parameters), None))
            continue
        logical_id, resource = old[name]
        old_name = deployed_names.get(logical_id)
        rekeyed = _key_signature(resource) != shape.key_signature()
        tagged = rekey_suffix(shape)
        if rekeyed or old_name == kpi_physical_name(name, parameters, tagged):
            suffixes[name] = tagged  # a new key needs a new name; a re-keyed table keeps the name it got
        new_name = kpi_physical_name(name, parameters, suffixes.get(name, ""))
        if new_name != old_name or rekeyed:
            changes.append(TableChange(name, new_name, old_name, rekeyed=rekeyed))
    for name, (logical_id, resource) in old.items():
        if name not in shapes:
            changes.append(TableChange(name, None, deployed_names.get(logical_id, logical_id),
                                       retained=resource.get("DeletionPolicy") == "Retain"))
    return suffixes, changes


def emulator_template(
    template: dict[str, Any], stack_name: str, kpi_names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The copy of a rendered template that moto's CloudFormation deploys faithfully (module docstring):
    the same resources, plus one output per DefinitionSubstitutions entry, with the moto adaptations.
    `kpi_names` (table -> the name its TableName evaluates to under the stack's parameters; default:
    the parameters' defaults) are written as literals (`_adapt_kpi_names`)."""
    copy = json.loads(json.dumps(template))
    subs = copy["Resources"][STATE_MACHINE_ID]["Properties"]["DefinitionSubstitutions"]
    for key, expression in subs.items():
        copy.setdefault("Outputs", {})[SUBSTITUTION_OUTPUT + key] = {"Value": expression}
    _adapt_for_moto(copy, stack_name)
    _adapt_kpi_names(copy, kpi_names)
    return copy


def _adapt_kpi_names(template: dict[str, Any], kpi_names: Mapping[str, str] | None) -> None:
    """moto re-resolves neither a resource whose `Fn::Sub` names a changed parameter nor one that merely
    references a replaced resource, so a new prefix or a re-keyed table would leave the old names in the
    tables and in the tasks' KPIPE_KPI_TABLES. The emulator's copy writes the values AWS would compute:
    each KPI table's TableName, and the JSON of the names where the template builds it."""
    tables = _deployed_kpi_tables(template)
    if not tables:
        return
    names = dict(kpi_names or {})
    defaults = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
    for name, (_, resource) in tables.items():
        names.setdefault(name, kpi_physical_name(name, defaults))
        resource["Properties"]["TableName"] = names[name]
    literal = json.dumps({name: names[name] for name in tables}, separators=(",", ":"))
    expression = _names_json({name: None for name in tables})  # type: ignore[misc]

    def swap(node: Any) -> Any:
        if node == expression:
            return literal
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    template["Resources"] = swap(template["Resources"])
    template["Outputs"] = swap(template.get("Outputs", {}))


def compact_asl(asl_text: str) -> str:
    """The definition as inlined: the same JSON without insignificant whitespace (keys in file order).
    Why: CloudFormation caps an inline template at 51,200 bytes and the indented ASL alone is ~23 kB."""
    return json.dumps(json.loads(asl_text), separators=(",", ":"))


# ------------------------------------------------------------------------------------------------
# Deploying
# ------------------------------------------------------------------------------------------------
def is_emulated(client: Any) -> bool:
    """True when `client` talks to an emulator: a non-AWS endpoint (moto server, AWS_ENDPOINT_URL)
    or moto's in-process mock being active."""
    host = urlparse(client.meta.endpoint_url).hostname or ""
    if not host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws")):
        return True
    models = sys.modules.get("moto.core.models")
    return bool(models is not None and getattr(getattr(models, "MockAWS", None), "_nested_count", 0) > 0)


def stack_status(cfn: Any, stack_name: str) -> str | None:
    """Current status, or None when no such stack exists."""
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except cfn.exceptions.ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return stacks[0]["StackStatus"] if stacks else None


def stack_outputs(cfn: Any, stack_name: str) -> dict[str, str]:
    """The stack's outputs as {OutputKey: OutputValue}."""
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


Progress = Callable[[str], None]


def _wait(
    cfn: Any,
    stack_name: str,
    ok: set[str] | None,
    poll_seconds: float,
    timeout_seconds: float,
    progress: Progress | None = None,
) -> str | None:
    """Poll until the stack is out of *_IN_PROGRESS; raise unless it ends in `ok` (None: any end)."""
    deadline = time.monotonic() + timeout_seconds
    last = ""
    while True:
        status = stack_status(cfn, stack_name)
        if progress is not None and status != last:
            progress(f"stack {stack_name}: {status or 'not present'}")
            last = status or ""
        if status is None and (ok is None or "DELETE_COMPLETE" in ok):
            return None
        if status is not None and not status.endswith("_IN_PROGRESS"):
            if ok is None or status in ok:
                return status
            raise DeployError(f"stack {stack_name} ended {status}:\n" + _failure_reasons(cfn, stack_name))
        if time.monotonic() > deadline:
            raise DeployError(f"stack {stack_name} still {status} after {timeout_seconds:.0f}s")
        time.sleep(poll_seconds)


def _failure_reasons(cfn: Any, stack_name: str) -> str:
    try:
        events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
    except Exception:  # the reasons are a courtesy; never mask the real failure
        return "  (no stack events available)"
    lines = [
        f"  {e.get('LogicalResourceId')} {e.get('ResourceStatus')}: {e.get('ResourceStatusReason')}"
        for e in events
        if "FAILED" in e.get("ResourceStatus", "")
    ]
    return "\n".join(reversed(lines)) or "  (no failed resource events)"


def deploy_stack(
    cfn_client: Any,
    stack_name: str,
    parameters: dict[str, str],
    *,
    target: Target = "auto",
    template_path: Path = TEMPLATE_PATH,
    asl_path: Path = ASL_PATH,
    cfg: PipelineConfig | str | Path | None = None,
    poll_seconds: float = 5.0,
    timeout_seconds: float = 3600.0,
    progress: Progress | None = None,
    notice: Progress | None = None,
) -> dict[str, str]:
    """Create or update `stack_name` from the template rendered for `cfg` (a PipelineConfig or a path;
    default: the project's pipeline.yaml); return its outputs.

    Parameters not given keep their previous value on an update (as `aws cloudformation deploy`
    does), so a re-run without `ImageUri` does not roll the tasks back to `:latest`. `target="auto"`
    deploys the emulator copy (`emulator_template`) to moto (see `is_emulated`), the rendering as is
    otherwise. `progress` receives a line per stack status change; `notice` (default: `progress`, else
    stderr) one line per KPI table an update creates, renames, re-keys or leaves behind (`TableChange`)."""
    emulated = is_emulated(cfn_client) if target == "auto" else target == "emulator"
    cfg = _config(cfg)
    template = render_template_dict(template_path, asl_path, cfg)
    declared = set(template.get("Parameters", {}))
    unknown = set(parameters) - declared
    if unknown:
        raise ValueError(f"unknown stack parameters {sorted(unknown)}; the template declares {sorted(declared)}")

    # Another deployment still running: let it finish first (an update would be refused).
    status = _wait(cfn_client, stack_name, None, poll_seconds, timeout_seconds, progress)
    if status in {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED"}:
        # A stack that never got created cannot be updated; CloudFormation wants it deleted first.
        # Its parameters (say, the networking) carry over to the new attempt unless given again.
        failed = cfn_client.describe_stacks(StackName=stack_name)["Stacks"][0].get("Parameters", [])
        parameters = {
            **{p["ParameterKey"]: p["ParameterValue"] for p in failed if p["ParameterKey"] in declared},
            **parameters,
        }
        cfn_client.delete_stack(StackName=stack_name)
        _wait(cfn_client, stack_name, {"DELETE_COMPLETE"}, poll_seconds, timeout_seconds, progress)
        status = None

    changes: list[TableChange] = []
    previous: dict[str, str] = {}
    suffixes: dict[str, str] = {}
    defaults = {k: str(v["Default"]) for k, v in template["Parameters"].items() if "Default" in v}
    effective = {**defaults, **{k: str(v) for k, v in parameters.items()}}
    if status is not None:
        # The previous values spelled out rather than UsePreviousValue: same effect on AWS, and
        # moto only remembers the parameters passed explicitly at creation.
        previous = {
            p["ParameterKey"]: p["ParameterValue"]
            for p in cfn_client.describe_stacks(StackName=stack_name)["Stacks"][0].get("Parameters", [])
            if p["ParameterKey"] in declared
        }
        effective = {**defaults, **previous, **{k: str(v) for k, v in parameters.items()}}
        suffixes, changes = plan_kpi_tables(cfg, deployed_template(cfn_client, stack_name),
                                            deployed_resources(cfn_client, stack_name), effective)
        if suffixes:
            template = render_template_dict(template_path, asl_path, cfg, name_suffixes=suffixes)
    if emulated:
        names = {n: kpi_physical_name(n, effective, suffixes.get(n, "")) for n in cfg.kpis}
        template = emulator_template(template, stack_name, names)
    body = json.dumps(template, separators=(",", ":"))
    if len(body.encode()) > MAX_TEMPLATE_BODY:
        raise DeployError(
            f"rendered template is {len(body.encode())} bytes; CloudFormation accepts {MAX_TEMPLATE_BODY}"
        )

    with _quiet_moto():
        if status is None:
            cfn_client.create_stack(
                StackName=stack_name,
                TemplateBody=body,
                Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()],
                Capabilities=["CAPABILITY_IAM"],
                Tags=[{"Key": "project", "Value": "kpipe"}],
            )
            _wait(cfn_client, stack_name, {"CREATE_COMPLETE"}, poll_seconds, timeout_seconds, progress)
        else:
            merged = {**previous, **{k: str(v) for k, v in parameters.items()}}
            if emulated:
                # moto re-creates (and, for tables and log groups, loses track of) every resource that
                # references a parameter it did not see at creation; a value left at its default is
                # the same value unpassed, so leave those out.
                defaults = {k: str(v["Default"]) for k, v in template["Parameters"].items() if "Default" in v}
                merged = {k: v for k, v in merged.items() if v != defaults.get(k) or previous.get(k) != v}
            params = [{"ParameterKey": k, "ParameterValue": v} for k, v in merged.items()]
            try:
                cfn_client.update_stack(
                    StackName=stack_name, TemplateBody=body, Parameters=params, Capabilities=["CAPABILITY_IAM"]
                )
            except cfn_client.exceptions.ClientError as exc:
                if "No updates are to be performed" not in str(exc):
                    raise
                changes = []
            else:
                _wait(cfn_client, stack_name, {"UPDATE_COMPLETE"}, poll_seconds, timeout_seconds, progress)

        outputs = stack_outputs(cfn_client, stack_name)
        if emulated:
            _complete_on_emulator(cfn_client, stack_name, template, outputs)
    say = notice or progress or _to_stderr
    for change in changes:
        say(change.message())
    return {k: v for k, v in outputs.items() if not k.startswith(SUBSTITUTION_OUTPUT)}


def deployed_template(cfn: Any, stack_name: str) -> dict[str, Any]:
    """The template the stack was last deployed with (JSON, or YAML with short-form intrinsics)."""
    body = cfn.get_template(StackName=stack_name).get("TemplateBody") or {}
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = yaml.load(body, Loader=_CfnLoader)
    return dict(body)


def deployed_resources(cfn: Any, stack_name: str) -> dict[str, str]:
    """Logical id -> physical id of the stack's resources (for a DynamoDB table: its name)."""
    return {
        r["LogicalResourceId"]: r.get("PhysicalResourceId") or ""
        for r in cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
        if r.get("LogicalResourceId")  # moto lists the resource types it skipped as empty entries
    }


@contextmanager
def _quiet_moto() -> Iterator[None]:
    """In-process moto warns (warning + log line) for every resource type its CloudFormation skips,
    on every lazy re-parse; those gaps are known and documented above, so keep them off the console."""
    moto_logger = logging.getLogger("moto")
    level = moto_logger.level
    moto_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Tried to parse AWS::", category=UserWarning)
            yield
    finally:
        moto_logger.setLevel(level)


def delete_stack(
    cfn_client: Any,
    stack_name: str,
    *,
    poll_seconds: float = 5.0,
    timeout_seconds: float = 3600.0,
    progress: Progress | None = None,
) -> None:
    """Delete the stack and wait until it is gone (a missing stack is not an error)."""
    if stack_status(cfn_client, stack_name) is None:
        return
    cfn_client.delete_stack(StackName=stack_name)
    _wait(cfn_client, stack_name, {"DELETE_COMPLETE"}, poll_seconds, timeout_seconds, progress)


def empty_bucket(s3_client: Any, bucket: str) -> int:
    """Delete every object version and delete marker (a versioned bucket must be empty before
    CloudFormation can delete it). Returns how many were deleted."""
    deleted = 0
    paginator = s3_client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket):
        batch = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        for i in range(0, len(batch), 1000):
            chunk = batch[i : i + 1000]
            result = s3_client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
            if result.get("Errors"):
                raise DeployError(f"could not empty s3://{bucket}: {result['Errors'][:3]}")
            deleted += len(chunk)
    return deleted


# ------------------------------------------------------------------------------------------------
# Emulator completion: the properties moto's CloudFormation drops, applied through the APIs
# ------------------------------------------------------------------------------------------------
def _sibling_client(cfn: Any, service: str) -> Any:
    """A client for `service` on the same emulator endpoint and region as `cfn` (emulator only:
    moto accepts any credentials, so dummy ones stand in when the environment has none)."""
    import boto3

    kwargs: dict[str, Any] = {"region_name": cfn.meta.region_name}
    host = urlparse(cfn.meta.endpoint_url).hostname or ""
    if not host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws")):
        kwargs["endpoint_url"] = cfn.meta.endpoint_url
    if boto3.Session().get_credentials() is None:
        kwargs.update(aws_access_key_id="testing", aws_secret_access_key="testing")
    return boto3.client(service, **kwargs)


def _adapt_for_moto(template: dict[str, Any], stack_name: str) -> None:
    """Two moto CloudFormation bugs, worked around in the emulator's copy of the template only:

    - an unnamed ECR repository gets `<stack>-<LogicalId>-<suffix>`, which moto's own ECR refuses
      (upper case); AWS generates a valid name. Name it `<stack>-<logicalid>`.
    - a task definition *update* registers the ContainerDefinitions with their CloudFormation
      (PascalCase) keys, where creation converts them to the ECS API's camelCase, so after an update
      `describe_task_definition` has no `image`/`command`. Written in camelCase, both paths agree
      (creation's conversion leaves camelCase keys as they are)."""
    for logical_id, resource in template["Resources"].items():
        props = resource.setdefault("Properties", {})
        if resource["Type"] == "AWS::ECR::Repository":
            props.setdefault("RepositoryName", f"{stack_name}-{logical_id}".lower())
        elif resource["Type"] == "AWS::ECS::TaskDefinition" and "ContainerDefinitions" in props:
            props["ContainerDefinitions"] = _camel_keys(props["ContainerDefinitions"])


def _camel_keys(value: Any) -> Any:
    """PascalCase keys to camelCase, recursively, leaving intrinsic functions (`Ref`, `Fn::*`) intact."""
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in {"Ref", "Condition"} | {k for k in value if k.startswith("Fn::")}:
            return value
        return {k[:1].lower() + k[1:]: _camel_keys(v) for k, v in value.items()}
    return value


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's LifecycleConfiguration rule -> the S3 API's."""
    out: dict[str, Any] = {"ID": rule["Id"], "Status": rule["Status"], "Filter": {"Prefix": rule.get("Prefix", "")}}
    if "ExpirationInDays" in rule:
        out["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "Transitions" in rule:
        out["Transitions"] = [
            {"Days": int(t["TransitionInDays"]), "StorageClass": t["StorageClass"]} for t in rule["Transitions"]
        ]
    if "NoncurrentVersionExpiration" in rule:
        out["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
        }
    if "AbortIncompleteMultipartUpload" in rule:
        out["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
        }
    return out


def _complete_on_emulator(cfn: Any, stack_name: str, template: dict[str, Any], outputs: dict[str, str]) -> None:
    sm = template["Resources"][STATE_MACHINE_ID]["Properties"]
    values = {key: outputs[SUBSTITUTION_OUTPUT + key] for key in sm["DefinitionSubstitutions"]}
    definition = apply_substitutions(sm["DefinitionString"], values)
    sfn = _sibling_client(cfn, "stepfunctions")
    arn = outputs["StateMachineArn"]
    if sfn.describe_state_machine(stateMachineArn=arn)["definition"] != definition:
        sfn.update_state_machine(stateMachineArn=arn, definition=definition)

    physical = {
        r["LogicalResourceId"]: r.get("PhysicalResourceId")
        for r in cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
        if r.get("LogicalResourceId")  # moto lists the resource types it skipped as empty entries
    }
    s3 = dynamodb = None
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        name = physical.get(logical_id)
        if not name:
            continue
        if resource["Type"] == "AWS::S3::Bucket":
            s3 = s3 or _sibling_client(cfn, "s3")
            if "VersioningConfiguration" in props:
                s3.put_bucket_versioning(
                    Bucket=name, VersioningConfiguration={"Status": props["VersioningConfiguration"]["Status"]}
                )
            if "PublicAccessBlockConfiguration" in props:
                s3.put_public_access_block(
                    Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
                )
            if "OwnershipControls" in props:
                s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls=props["OwnershipControls"])
            if "LifecycleConfiguration" in props:
                s3.put_bucket_lifecycle_configuration(
                    Bucket=name,
                    LifecycleConfiguration={
                        "Rules": [_lifecycle_rule(r) for r in props["LifecycleConfiguration"]["Rules"]]
                    },
                )
        elif resource["Type"] == "AWS::DynamoDB::Table":
            pitr = props.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled")
            if pitr:
                dynamodb = dynamodb or _sibling_client(cfn, "dynamodb")
                dynamodb.update_continuous_backups(
                    TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
                )


# ------------------------------------------------------------------------------------------------
# Command line (used by infra/deploy.mk)
# ------------------------------------------------------------------------------------------------
def _parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param wants KEY=VALUE, got {item!r}")
        params[key] = value
    return params


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m kpipe.infra render|deploy|outputs|empty-bucket|destroy` (see infra/README.md)."""
    parser = argparse.ArgumentParser(prog="python -m kpipe.infra", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    config_help = "pipeline.yaml whose KPI tables the stack holds (default: the project's)"
    p_render = sub.add_parser("render", help="print the deployable template (JSON)")
    p_render.add_argument("--out", type=Path, help="write to this file instead of stdout")
    p_render.add_argument("--asl", type=Path, default=ASL_PATH, help="state machine definition to inline")
    p_render.add_argument("--config", type=Path, default=None, help=config_help)
    p_deploy = sub.add_parser("deploy", help="create or update the stack, print its outputs as JSON")
    p_deploy.add_argument("--stack-name", required=True)
    p_deploy.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p_deploy.add_argument("--outputs-file", type=Path, help="also write the outputs JSON here")
    p_deploy.add_argument("--asl", type=Path, default=ASL_PATH, help="state machine definition to inline")
    p_deploy.add_argument("--config", type=Path, default=None, help=config_help)
    p_out = sub.add_parser("outputs", help="print the stack's outputs (JSON), or one output's value")
    p_out.add_argument("--stack-name", required=True)
    p_out.add_argument("--key", help="print only this output's value")
    p_out.add_argument("--outputs-file", type=Path, help="also write the outputs JSON here")
    p_empty = sub.add_parser("empty-bucket", help="delete every object version of a bucket")
    p_empty.add_argument("--bucket", required=True)
    p_destroy = sub.add_parser("destroy", help="empty the stack's bucket and delete the stack")
    p_destroy.add_argument("--stack-name", required=True)
    args = parser.parse_args(argv)

    if args.cmd == "render":
        text = render_template(asl_path=args.asl, cfg=args.config)
        if args.out:
            args.out.write_text(text)
        else:
            print(text)
        return 0

    import boto3

    cfn = boto3.client("cloudformation")
    if args.cmd in {"deploy", "outputs"}:
        if args.cmd == "deploy":
            outputs = deploy_stack(
                cfn, args.stack_name, _parse_params(args.param), asl_path=args.asl, cfg=args.config, progress=_to_stderr
            )
        else:
            if stack_status(cfn, args.stack_name) is None:
                print(f"stack {args.stack_name} does not exist", file=sys.stderr)
                return 1
            outputs = stack_outputs(cfn, args.stack_name)
        if args.outputs_file:
            args.outputs_file.parent.mkdir(parents=True, exist_ok=True)
            args.outputs_file.write_text(json.dumps(outputs, indent=2, sort_keys=True) + "\n")
        if getattr(args, "key", None):
            print(outputs[args.key])
        else:
            print(json.dumps(outputs, indent=2, sort_keys=True))
        return 0
    if args.cmd == "empty-bucket":
        print(f"deleted {empty_bucket(boto3.client('s3'), args.bucket)} object versions from s3://{args.bucket}")
        return 0
    # destroy
    if stack_status(cfn, args.stack_name) is None:
        print(f"stack {args.stack_name} does not exist; nothing to delete")
        return 0
    bucket = stack_outputs(cfn, args.stack_name).get("BucketName")
    if bucket:
        s3 = boto3.client("s3")
        try:
            print(f"deleted {empty_bucket(s3, bucket)} object versions from s3://{bucket}")
        except s3.exceptions.NoSuchBucket:
            print(f"s3://{bucket} is already gone")
    delete_stack(cfn, args.stack_name, progress=_to_stderr)
    print(f"deleted stack {args.stack_name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
