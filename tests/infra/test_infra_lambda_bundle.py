"""The Lambda bundle (`chalice deploy`: app.py, chalicelib/, vendor/, requirements.txt) holds every
first-party module the handler imports, and none of the engine's heavy libraries: the config model
comes from the vocabulary registry, which imports neither petl, DuckDB nor pyarrow."""

from __future__ import annotations

import re
import sys

from tests.infra.support import FIRST_PARTY, ROOT, reachable, runtime_imports


def _vendored() -> set[str]:
    text = (ROOT / "infra" / "deploy.mk").read_text()
    match = re.search(r"^LAMBDA_VENDOR = (.+)$", text, re.M)
    assert match, "infra/deploy.mk must name the Lambda's vendored files (LAMBDA_VENDOR)"
    return set(match.group(1).split())


def test_the_lambda_imports_only_what_its_bundle_ships() -> None:
    files = reachable([ROOT / "app.py"])
    extra = {p.relative_to(ROOT).as_posix() for p in files} - {"app.py"}
    extra = {p for p in extra if not p.startswith("chalicelib/")}
    assert extra <= _vendored(), f"the Lambda imports {sorted(extra - _vendored())}, which its bundle lacks"
    assert all((ROOT / f).is_file() for f in _vendored())


def test_the_lambda_needs_no_engine_library() -> None:
    pins = {line.split("==")[0].strip().lower() for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    for path in reachable([ROOT / "app.py"]):
        for module, line in runtime_imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in FIRST_PARTY or top == "__future__":
                continue
            assert top not in {"petl", "duckdb", "pyarrow", "pandas", "moto"}, f"{path}:{line} imports {top}"
            provided = {"boto3", "botocore", "chalice"}  # by the Lambda runtime and chalice itself
            assert top.replace("yaml", "pyyaml") in pins or top in provided, f"{path}:{line} imports {top}, not in requirements.txt"
