"""YAML read strictly: what PyYAML lets pass silently in a pipeline.yaml is a refusal here.

A duplicated key would silently replace the first one (a second `sale_price:` drops the first's
checks); nesting or anchors can make a small file expand without bound; a file that is not UTF-8
text is no config at all. Each problem is one line `<YAML path> (line N): what is wrong; allowed: ...`,
the shape `chalicelib.config.ConfigError` lists. The Lambda loads the same way.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 32  # far deeper than any pipeline.yaml; PyYAML itself recurses per level
MAX_NODES = 100_000  # after anchors and aliases are expanded (a "billion laughs" file stops here)


class StrictYamlError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def decode(data: bytes) -> str:
    """The file's text; refuses bytes that are not UTF-8 (a UTF-16 export, a binary file)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StrictYamlError([f"<file>: byte {data[exc.start]:#04x} at offset {exc.start} is not UTF-8; allowed: a UTF-8 text file"]) from exc
    if "\x00" in text:
        raise StrictYamlError(["<file>: holds NUL characters, so it is binary, not YAML; allowed: a UTF-8 text file"])
    return text


def load(text: str) -> Any:
    """The document, after its node tree passed the checks above."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError as exc:
        raise StrictYamlError([f"<yaml>: nested deeper than PyYAML can read; allowed: at most {MAX_DEPTH} levels"]) from exc
    if root is None:
        return None
    problems: list[str] = []
    _walk(root, "", 0, [0], problems)
    if problems:
        raise StrictYamlError(problems)
    return yaml.safe_load(text)


def _walk(node: yaml.Node, path: str, depth: int, seen: list[int], problems: list[str]) -> None:
    seen[0] += 1
    where = f"{path or '<root>'} (line {node.start_mark.line + 1})"
    if seen[0] > MAX_NODES:
        if seen[0] == MAX_NODES + 1:
            problems.append(f"{where}: the document expands beyond {MAX_NODES} values (anchors and aliases included); allowed: a smaller file")
        return
    if depth > MAX_DEPTH:
        problems.append(f"{where}: nested deeper than {MAX_DEPTH} levels; allowed: at most {MAX_DEPTH}")
        return
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "<complex key>"
            line = key.start_mark.line + 1
            if name in first:
                problems.append(
                    f"{path + '.' if path else ''}{name} (line {line}): the key appears twice (first on line {first[name]}),"
                    " and the second would silently replace the first; allowed: each key once"
                )
            first.setdefault(name, line)
            _walk(value, f"{path}.{name}" if path else name, depth + 1, seen, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _walk(value, f"{path}[{i}]", depth + 1, seen, problems)
