"""The task image without Docker: the Dockerfile and the task definitions run modules that exist, the
image copies every module they import, and ecs_tasks/requirements.txt installs every third-party
import, pinned as in constraints.txt."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from tests.infra.support import FIRST_PARTY, ROOT, module_file, reachable, runtime_imports

DOCKERFILE = ROOT / "ecs_tasks" / "Dockerfile"
REQUIREMENTS = ROOT / "ecs_tasks" / "requirements.txt"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def copied_paths() -> list[str]:
    """Sources of the COPY instructions (repository paths, relative to the build context = root)."""
    paths = []
    for word, rest in instructions():
        if word == "COPY":
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            paths += args[:-1]
    return paths


def in_image(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == c.rstrip("/") or rel.startswith(c.rstrip("/") + "/") for c in copied_paths())


def task_modules() -> list[str]:
    """The modules the task definitions and the Dockerfile run (`python -m <module>`)."""
    from kpipe import infra

    template = infra.load_template()
    commands: list[list[str]] = [
        res["Properties"]["ContainerDefinitions"][0]["Command"]
        for res in template["Resources"].values()
        if res["Type"] == "AWS::ECS::TaskDefinition"
    ]
    cmd = next(rest for word, rest in instructions() if word == "CMD")
    commands.append(json.loads(cmd))
    modules = []
    for command in commands:
        assert command[:2] == ["python", "-m"], command
        modules.append(command[2])
    return modules


def closure() -> tuple[set[Path], dict[str, list[str]]]:
    """First-party files reachable from the task entrypoints and every module under kpipe/engine,
    and the third-party top-level imports of those files ({name: [where]})."""
    roots = [module_file(m) for m in task_modules()]
    roots += sorted((ROOT / "kpipe" / "engine").glob("*.py")) + sorted((ROOT / "ecs_tasks").glob("*.py"))
    seen = reachable([r for r in roots if r is not None])
    third: dict[str, list[str]] = {}
    for path in sorted(seen):
        for module, line in runtime_imports(path):
            top = module.split(".")[0]
            if top and top not in sys.stdlib_module_names and top != "__future__" and top not in FIRST_PARTY:
                third.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{line}")
    return seen, third


def requirements() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"ecs_tasks/requirements.txt: {line!r} is not pinned with =="
            pins[normalize(name)] = version.strip()
    return pins


def test_dockerfile_base_user_and_install() -> None:
    ins = instructions()
    assert ("FROM", "python:3.11-slim") in ins
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the container must not run as root"
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip install" in runs and "ecs_tasks/requirements.txt" in runs


def test_dockerfile_copies_existing_paths_only_what_tasks_need() -> None:
    paths = copied_paths()
    for path in paths:
        assert (ROOT / path).exists(), f"ecs_tasks/Dockerfile copies {path}, which does not exist"
    assert set(paths) >= {"chalicelib/", "kpipe/engine/", "ecs_tasks/", "pipeline.yaml"}
    assert "app.py" not in paths and "." not in paths and "kpipe/" not in paths


def test_entrypoints_name_modules_that_exist() -> None:
    modules = task_modules()
    assert {"ecs_tasks.validate", "ecs_tasks.transform", "ecs_tasks.finalize"} <= set(modules)
    for module in modules:
        path = module_file(module)
        assert path is not None, f"{module} (run by the task definitions / Dockerfile) has no file yet"
        assert in_image(path), f"{path} is not copied into the image"


def test_image_contains_every_first_party_module_the_tasks_import() -> None:
    files, _ = closure()
    missing = sorted(str(p.relative_to(ROOT)) for p in files if not in_image(p))
    assert missing == [], f"imported by the tasks but not copied by ecs_tasks/Dockerfile: {missing}"


def test_requirements_cover_third_party_imports() -> None:
    _, third = closure()
    dists = importlib.metadata.packages_distributions()
    pins = requirements()
    problems = []
    for top, where in sorted(third.items()):
        names = {normalize(d) for d in dists.get(top, [])}
        if not names & set(pins):
            problems.append(f"{top} (imported at {where[0]}) is installed by none of {sorted(pins)}")
    assert problems == []


def test_requirements_are_pinned_as_in_constraints() -> None:
    constraints: dict[str, Any] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            constraints[normalize(name)] = version.strip()
    pins = requirements()
    assert {"boto3", "petl", "pydantic", "pyyaml", "structlog", "tenacity"} <= set(pins)
    assert {k: v for k, v in pins.items() if constraints.get(k) != v} == {}
    # and the pins are a complete set: every dependency of a pinned package is pinned too
    for name in pins:
        for req in importlib.metadata.requires(name) or []:
            if ";" in req and ("extra ==" in req or "python_version" in req):
                continue  # optional extras, and backports for other Pythons
            dep = normalize(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
            assert dep in pins, f"{name} needs {dep}, which ecs_tasks/requirements.txt does not pin"
