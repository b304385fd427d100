"""A hostile or careless pipeline.yaml is refused with its YAML path and what is allowed, never a
traceback, and never silently changes a rule (cases from issue 18's hostile tries)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from chalicelib.config import ConfigError, load_config, parse_config
from kpipe.cli import main

TAIL = """
kpis:
  T: {key: [id], metrics: {n: {count: id, from: products}}}
"""


def dataset(files: str = "products.csv", columns: str = "      id: {type: int}\n") -> str:
    return f"version: 1\ndatasets:\n  products:\n    files: {files}\n    key: id\n    columns:\n{columns}    partition_by: null\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    return err.value.problems


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    text = dataset(columns="      id: {type: int}\n      id: {type: string}\n") + TAIL
    assert problems(text) == [
        "datasets.products.columns.id (line 8): the key appears twice (first on line 7), and the second would"
        " silently replace the first; allowed: each key once"
    ]


def test_paths_that_climb_out_are_refused() -> None:
    found = problems(dataset(files="../outside/*.csv") + "storage: {processed: ../../x/, raw: /abs/}\n" + TAIL)
    assert "datasets.products.files: '../outside/*.csv' climbs out or is absolute; allowed: a relative path with no '.' or '..' part" in found
    assert any(p.startswith("storage.processed: '../../x/' climbs out") for p in found)
    assert any(p.startswith("storage.raw: '/abs/'") for p in found)


def test_deep_nesting_and_expanding_aliases_are_refused() -> None:
    deep = "version: 1\nx: " + "[" * 40 + "]" * 40 + "\n"
    assert any("nested deeper than 32 levels" in p for p in problems(deep))
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)
    )
    assert any("expands beyond 100000 values" in p for p in problems(laughs))
    assert any("nested deeper than PyYAML can read" in p for p in problems("x: " + "[" * 50_000 + "]" * 50_000))


@pytest.mark.parametrize(("data", "said"), [
    ("version: 1\n".encode("utf-16"), "<file>: byte 0xff at offset 0 is not UTF-8; allowed: a UTF-8 text file"),
    (b"version: 1\n\x00\x01binary", "<file>: holds NUL characters, so it is binary, not YAML; allowed: a UTF-8 text file"),
])
def test_a_file_that_is_not_utf8_text_is_refused(tmp_path: Path, data: bytes, said: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [said]
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2
    assert said.split(": ")[1].split(" ")[0] in result.output
