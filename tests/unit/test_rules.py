"""Every row rule kind through `validate_batch`: required, type, each check operator, unique, references with
the cascade, defaults, a missing required column, and every broken rule listed by id."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.config import PipelineConfig, parse_config
from kpipe.engine.keys import IntColumn, KeyTable
from kpipe.engine.rules import BatchRefs, FileRules, _Multiply
from kpipe.engine.validate import validate_batch


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        return list(csv.DictReader(fh))


class Run:
    """The outcome of validating one batch: report, valid rows and rejected rows per dataset."""

    def __init__(self, cfg: PipelineConfig, raw: Path, out: Path) -> None:
        self.report = validate_batch(cfg, raw, out, "b-test")
        self.valid = {ds: read_csv(out / "validated" / f"{ds}.csv") for ds in cfg.datasets}
        self.rejected = {ds: read_csv(out / "rejected" / f"{ds}.csv") for ds in cfg.datasets}

    def reasons(self, dataset: str) -> list[list[str]]:
        """Each rejected row's rule ids, sorted (the order of reasons within a row is not specified)."""
        return [sorted(r["_reasons"].split(";")) for r in self.rejected[dataset]]

    def stats(self, dataset: str) -> dict[str, Any]:
        return self.report["datasets"][dataset]


@pytest.fixture
def run(tmp_path: Path, cfg: PipelineConfig, write_batch: Any) -> Any:
    """`run(products, orders, items, cfg=default)` -> Run."""
    counter = iter(range(1000))

    def go(products: Any = None, orders: Any = None, items: Any = None, config: PipelineConfig = cfg) -> Run:
        n = next(counter)
        batch = write_batch(tmp_path / f"raw{n}", products, orders, items)
        return Run(config, batch, tmp_path / f"out{n}")

    return go


P1 = {"id": 1, "category": "Books", "retail_price": "10.00"}
P2 = {"id": 2, "category": "Toys", "retail_price": "20.00"}
O1 = {"order_id": 1, "user_id": 7, "status": "Complete", "created_at": "2025-03-01T10:00:00"}
O2 = {"order_id": 2, "user_id": 8, "status": "Returned", "created_at": "2025-03-02T10:00:00"}


def item(iid: int, oid: int = 1, pid: int = 1, price: str = "9.50", **extra: Any) -> dict[str, Any]:
    return {"id": iid, "order_id": oid, "product_id": pid, "sale_price": price, **extra}


# ------------------------------------------------------------------------------------------------ required / type


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_required_value_missing(run: Any, blank: str) -> None:
    r = run([P1, {**P2, "category": blank}], [O1, {**O2, "user_id": blank}],
            [item(1), item(2, price=blank)])
    assert r.reasons("products") == [["category.required"]]
    assert r.reasons("orders") == [["user_id.required"]]
    assert r.reasons("order_items") == [["sale_price.required"]]
    assert [p["id"] for p in r.valid["products"]] == ["1"]


def test_optional_value_missing_is_fine(run: Any) -> None:
    r = run([P1], [{**O1, "status": ""}], [item(1, status="")])
    assert r.stats("orders")["rows_valid"] == 1 and r.stats("order_items")["rows_valid"] == 1
    assert r.valid["orders"][0]["status"] == ""
    assert r.valid["orders"][0]["is_returned"] == "false"


@pytest.mark.parametrize(("dataset", "column", "bad"), [
    ("products", "id", "1.0"),
    ("products", "retail_price", "1e3"),
    ("products", "retail_price", "NaN"),
    ("orders", "order_id", "x5"),
    ("orders", "user_id", "7.5"),
    ("orders", "user_id", "9" * 5000),  # beyond int()'s 4,300 digits: a type error, not a crash
    ("orders", "created_at", "2025-13-45T00:00:00"),
    ("orders", "created_at", "2025-02-29T10:00:00"),
    ("order_items", "product_id", "\u0661"),
    ("order_items", "sale_price", "inf"),
    ("order_items", "quantity", "2.0"),
])
def test_type_error(run: Any, dataset: str, column: str, bad: str) -> None:
    rows = {"products": [P1], "orders": [O1], "order_items": [item(1, quantity=1)]}
    rows[dataset] = [{**rows[dataset][0], column: bad}]
    r = run(rows["products"], rows["orders"], rows["order_items"])
    assert r.reasons(dataset)[0] == [f"{column}.type"]
    assert r.stats(dataset)["reasons"] == {f"{column}.type": 1}


def test_values_are_stripped_before_parsing(run: Any) -> None:
    r = run([{**P1, "id": " 1 ", "retail_price": " 10.00 "}],
            [{**O1, "order_id": " 1", "created_at": " 2025-03-01T10:00:00 "}],
            [item(1, oid=" 1 ", price=" 9.50 ", quantity=" 2 ")])
    assert r.stats("order_items")["rows_valid"] == 1
    assert r.valid["order_items"][0]["revenue"] == "19.00"


# ------------------------------------------------------------------------------------------------ checks

CHECKS_YAML = """
datasets:
  things:
    files: things/*.csv
    key: id
    columns:
      id: {type: int, required: true, unique: true}
      day: {type: datetime, required: true}
      n_gt: {type: int, checks: [{gt: 0}]}
      n_ge: {type: int, checks: [{ge: 1}]}
      n_lt: {type: decimal, checks: [{lt: 10}]}
      n_le: {type: decimal, checks: [{le: 10}]}
      n_between: {type: decimal, checks: [{between: [1, 5]}]}
      n_eq: {type: int, checks: [{eq: 3}]}
      n_ne: {type: decimal, checks: [{ne: 0}]}
      n_one_of: {type: int, checks: [{one_of: [1, 2]}]}
      s_eq: {type: string, checks: [{eq: ok}]}
      s_eq_ic: {type: string, checks: [{eq: ok, ignore_case: true}]}
      s_ne: {type: string, checks: [{ne: bad}]}
      s_ne_ic: {type: string, checks: [{ne: bad, ignore_case: true}]}
      s_one_of: {type: string, checks: [{one_of: [red, green]}]}
      s_one_of_ic: {type: string, checks: [{one_of: [red, green], ignore_case: true}]}
      s_codes: {type: string, checks: [{one_of: [1, 2]}]}
      two: {type: int, checks: [{ge: 0}, {le: 100}, {ne: 50}]}
    derived:
      d: {date_of: day}
    partition_by: d
kpis:
  T:
    key: [d]
    metrics:
      c: {count: id, from: things}
"""


@pytest.fixture(scope="module")
def checks_cfg() -> PipelineConfig:
    return parse_config(CHECKS_YAML)


def check_outcome(tmp_path: Path, cfg: PipelineConfig, column: str, value: str) -> list[str]:
    """Reasons for one row holding `value` in `column` ([] when valid)."""
    raw = tmp_path / "raw"
    (raw / "things").mkdir(parents=True)
    (raw / "things" / "a.csv").write_text(
        f'id,day,{column}\n1,2025-03-01T00:00:00,"{value}"\n', encoding="utf-8")
    r = Run(cfg, raw, tmp_path / "out")
    assert r.stats("things")["rows_in"] == 1
    return r.reasons("things")[0] if r.rejected["things"] else []


@pytest.mark.parametrize(("column", "value", "expected"), [
    ("n_gt", "1", []), ("n_gt", "0", ["n_gt.gt"]), ("n_gt", "-5", ["n_gt.gt"]),
    ("n_ge", "1", []), ("n_ge", "0", ["n_ge.ge"]),
    ("n_lt", "9.99", []), ("n_lt", "10", ["n_lt.lt"]), ("n_lt", "10.00", ["n_lt.lt"]),
    ("n_le", "10.00", []), ("n_le", "10.01", ["n_le.le"]),
    ("n_between", "1", []), ("n_between", "5.00", []), ("n_between", "3", []),
    ("n_between", "0.99", ["n_between.between"]), ("n_between", "5.01", ["n_between.between"]),
    ("n_eq", "3", []), ("n_eq", "+3", []), ("n_eq", "4", ["n_eq.eq"]),
    ("n_ne", "0.5", []), ("n_ne", "0.00", ["n_ne.ne"]), ("n_ne", "-0", ["n_ne.ne"]),
    ("n_one_of", "2", []), ("n_one_of", "3", ["n_one_of.one_of"]),
    ("s_eq", "ok", []), ("s_eq", " ok ", []), ("s_eq", "OK", ["s_eq.eq"]), ("s_eq", "okay", ["s_eq.eq"]),
    ("s_eq_ic", "OK", []), ("s_eq_ic", "Ok", []), ("s_eq_ic", "no", ["s_eq_ic.eq"]),
    ("s_ne", "good", []), ("s_ne", "BAD", []), ("s_ne", "bad", ["s_ne.ne"]),
    ("s_ne_ic", "BaD", ["s_ne_ic.ne"]), ("s_ne_ic", "good", []),
    ("s_one_of", "red", []), ("s_one_of", "Red", ["s_one_of.one_of"]), ("s_one_of", "blue", ["s_one_of.one_of"]),
    ("s_one_of_ic", "GREEN", []), ("s_one_of_ic", "Red", []), ("s_one_of_ic", "blue", ["s_one_of_ic.one_of"]),
    ("two", "50", ["two.ne"]), ("two", "101", ["two.le"]), ("two", "-1", ["two.ge"]), ("two", "0", []),
    # a check runs on the parsed value only: a type error is the one reason
    ("n_gt", "abc", ["n_gt.type"]), ("n_between", "1e1", ["n_between.type"]),
    # a null optional value is not checked
    ("n_gt", "", []), ("s_eq", "  ", []),
])
def test_check_operators(tmp_path: Path, checks_cfg: PipelineConfig, column: str, value: str,
                         expected: list[str]) -> None:
    assert check_outcome(tmp_path, checks_cfg, column, value) == expected


def test_numbers_in_a_one_of_match_the_same_text_on_a_string_column(tmp_path: Path,
                                                                    checks_cfg: PipelineConfig) -> None:
    """rules.py: "Compare numbers as Decimal, everything else as text, so `eq: 5` matches "5" and 5.0 alike".
    A user listing codes unquoted in YAML (`one_of: [1, 2]`) on a string column gets ints, not strings."""
    assert check_outcome(tmp_path, checks_cfg, "s_codes", "1") == []


# ------------------------------------------------------------------------------------------------ unique


def test_later_duplicate_is_rejected_the_first_kept(run: Any) -> None:
    r = run([P1, {**P1, "category": "Toys"}],
            [O1, {**O1, "user_id": 99}],
            [item(1, price="1.00"), item(1, price="2.00")])
    assert r.reasons("products") == [["id.unique"]]
    assert r.reasons("orders") == [["order_id.unique"]]
    assert r.reasons("order_items") == [["id.unique"]]
    assert r.valid["products"][0]["category"] == "Books"
    assert r.valid["orders"][0]["user_id"] == "7"
    assert r.valid["order_items"][0]["sale_price"] == "1.00"
    assert [row["_line"] for row in r.rejected["orders"]] == ["3"]


def test_duplicate_across_files_of_a_dataset_later_file_loses(run: Any) -> None:
    # files of a dataset are read in key order: a.csv before b.csv, whatever the creation order
    r = run([P1], {"b.csv": [{**O1, "user_id": 2}], "a.csv": [{**O1, "user_id": 1}]}, [item(1)])
    assert r.valid["orders"][0]["user_id"] == "1"
    assert r.rejected["orders"][0]["_file"] == "orders/b.csv"
    assert r.reasons("orders") == [["order_id.unique"]]


def test_a_rejected_row_still_claims_its_key(run: Any) -> None:
    """"A later duplicate row is rejected", read literally (as tests/oracle.py and the pandas baseline do):
    an earlier row with the same parseable key makes the later one a duplicate, even when that earlier row
    was itself rejected for another field."""
    r = run([P1], [{**O1, "created_at": "2025-03-01 25:00:00"}, O1], [item(1, price="0"), item(1)])
    assert r.reasons("orders") == [["created_at.type"], ["order_id.unique"]]
    assert r.valid["orders"] == []
    assert r.reasons("order_items") == [["order_id.references", "sale_price.gt"],
                                        ["id.unique", "order_id.references"]]


def test_rows_out_as_a_whole_claim_no_key(run: Any) -> None:
    """A row rejected before its fields are read (non-UTF-8 bytes, or its file lacks a required column)
    does not take its key: the same key later in the batch is valid."""
    bad_bytes = b"order_id,user_id,status,created_at\n1,7,Compl\xe9te,2025-03-01T10:00:00\n3,7,,2025-03-01T10:00:00\n"
    no_user = "order_id,created_at\n2,2025-03-01T10:00:00\n"
    r = run([P1], {"a.csv": bad_bytes, "b.csv": no_user, "c.csv": [O1, {**O2, "order_id": 2}]}, [item(1), item(2, 2)])
    assert r.reasons("orders") == [["row.encoding"], ["user_id.missing_column"]]
    assert sorted(o["order_id"] for o in r.valid["orders"]) == ["1", "2", "3"]
    assert r.stats("order_items")["rows_valid"] == 2


# ------------------------------------------------------------------------------------------------ references


def test_reference_to_an_unknown_key(run: Any) -> None:
    r = run([P1], [O1], [item(1), item(2, oid=99), item(3, pid=99)])
    assert r.reasons("order_items") == [["order_id.references"], ["product_id.references"]]
    assert [i["id"] for i in r.valid["order_items"]] == ["1"]


def test_cascade_an_item_of_a_rejected_order_or_product_is_rejected(run: Any) -> None:
    r = run([P1, {**P2, "retail_price": "-1"}],
            [O1, {**O2, "created_at": "not a date"}],
            [item(1), item(2, oid=2), item(3, pid=2), item(4, oid=2, pid=2)])
    assert r.reasons("products") == [["retail_price.gt"]]
    assert r.reasons("orders") == [["created_at.type"]]
    assert r.reasons("order_items") == [["order_id.references"], ["product_id.references"],
                                        ["order_id.references", "product_id.references"]]
    assert r.stats("order_items") == {"rows_in": 4, "rows_valid": 1, "rows_rejected": 3,
                                      "reasons": {"order_id.references": 2, "product_id.references": 2}}


def test_a_duplicate_order_row_does_not_hide_the_valid_one(run: Any) -> None:
    r = run([P1], [O1, O1], [item(1)])
    assert r.stats("orders")["rows_rejected"] == 1
    assert r.stats("order_items")["rows_valid"] == 1  # the first order 1 is valid: its item stays


def test_lookups_through_references(run: Any) -> None:
    r = run([P1, P2], [O1, O2], [item(1, oid=2, pid=2, price="20.00", quantity=2, status="RETURNED")])
    row = r.valid["order_items"][0]
    assert row["category"] == "Toys"
    assert row["order_date"] == "2025-03-02"  # the order's date, not the item's own created_at
    assert row["revenue"] == "40.00"
    assert row["is_returned"] == "true"


@pytest.mark.parametrize(("status", "returned"), [("Returned", "true"), ("RETURNED", "true"), (" returned ", "true"),
                                                  ("Complete", "false"), ("Returned-ish", "false"), ("", "false")])
def test_returned_is_case_insensitive(run: Any, status: str, returned: str) -> None:
    r = run([P1], [{**O1, "status": status}], [item(1, status=status)])
    assert r.valid["orders"][0]["is_returned"] == returned
    assert r.valid["order_items"][0]["is_returned"] == returned


# ------------------------------------------------------------------------------------------------ defaults


def test_quantity_defaults_to_1_when_the_column_is_absent(run: Any) -> None:
    r = run([P1], [O1], [item(1, price="9.50")])  # no quantity key: the header has no quantity column
    row = r.valid["order_items"][0]
    assert (row["quantity"], row["revenue"]) == ("1", "9.50")


@pytest.mark.parametrize("empty", ["", "  "])
def test_quantity_defaults_to_1_when_the_value_is_null(run: Any, empty: str) -> None:
    r = run([P1], [O1], [item(1, price="9.50", quantity=empty), item(2, price="9.50", quantity=3)])
    assert [(i["quantity"], i["revenue"]) for i in r.valid["order_items"]] == [("1", "9.50"), ("3", "28.50")]


@pytest.mark.parametrize(("quantity", "reason"), [("0", "quantity.gt"), ("-2", "quantity.gt"), ("x", "quantity.type")])
def test_bad_quantity_is_rejected_not_defaulted(run: Any, quantity: str, reason: str) -> None:
    r = run([P1], [O1], [item(1, quantity=quantity)])
    assert r.reasons("order_items") == [[reason]]


# ------------------------------------------------------------------------------------------------ missing column


def test_file_missing_a_required_column_rejects_all_its_rows_and_the_batch_goes_on(run: Any) -> None:
    without_user = "order_id,status,created_at\n1,Complete,2025-03-01T10:00:00\n3,Complete,2025-03-01T11:00:00\n"
    r = run([P1], {"a.csv": without_user, "b.csv": [O2]}, [item(1, oid=1), item(2, oid=2), item(3, oid=3)])
    assert r.stats("orders") == {"rows_in": 3, "rows_valid": 1, "rows_rejected": 2,
                                 "reasons": {"user_id.missing_column": 2}}
    assert {row["_file"] for row in r.rejected["orders"]} == {"orders/a.csv"}
    assert [o["order_id"] for o in r.valid["orders"]] == ["2"]
    # the cascade: items of those orders have no valid order
    assert r.reasons("order_items") == [["order_id.references"], ["order_id.references"]]
    assert [i["id"] for i in r.valid["order_items"]] == ["2"]


def test_missing_optional_column_is_fine(run: Any) -> None:
    r = run([P1], "order_id,user_id,created_at\n1,7,2025-03-01T10:00:00\n", [item(1)])
    assert r.stats("orders")["rows_valid"] == 1
    assert r.valid["orders"][0]["is_returned"] == "false"


def test_file_missing_two_required_columns_lists_both(run: Any) -> None:
    r = run([P1], "order_id,status\n1,Complete\n", [])
    assert sorted(r.reasons("orders")[0]) == ["created_at.missing_column", "user_id.missing_column"]


# ------------------------------------------------------------------------------------------------ every reason


def test_every_broken_rule_is_listed(run: Any) -> None:
    r = run([P1], [O1, {"order_id": "x", "user_id": "", "created_at": "2025-02-30T00:00:00"}],
            [item(1, pid=99, price="0", quantity="0"), item("z", oid=1, price="")])
    assert sorted(r.reasons("orders")[0]) == ["created_at.type", "order_id.type", "user_id.required"]
    assert sorted(r.reasons("order_items")[0]) == ["product_id.references", "quantity.gt", "sale_price.gt"]
    assert sorted(r.reasons("order_items")[1]) == ["id.type", "sale_price.required"]
    assert r.stats("order_items")["reasons"] == {"id.type": 1, "product_id.references": 1, "quantity.gt": 1,
                                                 "sale_price.gt": 1, "sale_price.required": 1}


def test_rejected_rows_keep_their_original_values(run: Any) -> None:
    r = run([P1], [O1], [item(1, price=" 0.00 ", quantity="0", status="Weird, \"quoted\"")])
    row = r.rejected["order_items"][0]
    assert (row["sale_price"], row["quantity"], row["status"]) == (" 0.00 ", "0", "Weird, \"quoted\"")
    assert (row["_file"], row["_line"]) == ("order_items/part-1.csv", "2")


OPTIONAL_KEYS_YAML = """
datasets:
  shops:
    files: shops.csv
    key: id
    columns:
      id: {type: int, required: true}
      name: {type: string}
  sales:
    files: sales/*.csv
    key: id
    columns:
      id: {type: int, required: true}
      shop: {type: int, references: shops}
      code: {type: string, unique: true}
      day: {type: datetime, required: true}
    derived:
      d: {date_of: day}
      shop_name: {lookup: {via: shop, field: name}}
    partition_by: d
kpis:
  Daily:
    key: [d]
    metrics:
      n: {count: id, from: sales}
"""


def test_empty_optional_references_and_unique_values_are_not_checked_in_either_path() -> None:
    """An optional reference left empty points at nothing and an optional unique value left empty is
    no duplicate, in the column-at-a-time path as in the row-by-row one (a chunk of clean rows took
    the first and rejected such rows as `.references` / `.unique`)."""
    cfg = parse_config(OPTIONAL_KEYS_YAML)
    refs = BatchRefs(cfg)
    refs.tables["shops"] = KeyTable()
    refs.tables["shops"].put_many([1], [("Corner",)])
    header = ["id", "shop", "code", "day"]
    rows = [["1", "1", "x", "2025-03-01 10:00:00"], ["2", "", "", "2025-03-01 11:00:00"],
            ["3", "", "", "2025-03-01 12:00:00"], ["4", "9", "x", "2025-03-01 13:00:00"]]
    cols, rejected, _texts = FileRules(cfg, "sales", header, refs, {}).apply_chunk(rows)
    by_row = FileRules(cfg, "sales", header, refs, {})
    row_reasons = [by_row.apply(r)[1] for r in rows]
    assert [sorted(why) for _i, why in rejected] == [sorted(why) for why in row_reasons if why]
    assert [i for i, _ in rejected] == [3]
    assert cols[-1] == ["Corner", None, None]  # the lookup through an empty reference is empty


_DECIMAL_TEXTS = st.builds(
    lambda sign, whole, frac: f"{sign}{whole}{'.' + frac if frac else ''}",
    st.sampled_from(["", "-"]),
    st.from_regex(r"[1-9][0-9]{0,30}", fullmatch=True),
    st.from_regex(r"[0-9]{0,4}", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_DECIMAL_TEXTS, st.sampled_from([1, 1, 1, 2, 3, 0, -1, 10**20])), min_size=1, max_size=12),
    st.booleans(),
    st.booleans(),
)
def test_multiply_with_texts_is_the_product_and_its_text(pairs: list[tuple[str, int]], swap: bool, all_ones: bool) -> None:
    """The shortcut for a factor of 1 gives exactly the products and `str` of each (28-digit context
    rounding included: values longer than the context keeps take the plain product)."""
    texts = [t for t, _ in pairs]
    values = [Decimal(t) for t in texts]
    units = IntColumn([1] * len(pairs) if all_ones else [q for _, q in pairs])
    cols: list[list[Any]] = [units, values] if swap else [values, units]
    step = _Multiply(0, 1, True)
    products, shown = step.with_texts(cols, {}, [None, texts] if swap else [texts, None])
    expected = step(cols, {})
    assert [(p, p.as_tuple()) for p in products] == [(e, e.as_tuple()) for e in expected]
    assert (shown if shown is not None else list(map(str, products))) == list(map(str, expected))
    if max(map(len, texts)) <= 28:
        assert shown is not None  # the shortcut was taken


def _mostly(good: list[str], bad: list[str]) -> st.SearchStrategy[str]:
    """Six good values to one bad: chunks with a few bad values, the case the partial fast paths serve."""
    return st.one_of(*[st.sampled_from(good)] * 6, st.sampled_from(bad))


def assert_same_decisions(by_chunk: FileRules, by_row: FileRules, rows: list[tuple[str, ...]]) -> None:
    """The chunk path and `apply` row by row: the same rejected rows with the same reasons in the same
    order, the same kept values in the same canonical text."""
    from kpipe.engine.parsing import format_value

    cols, rejected, texts = by_chunk.apply_chunk([list(r) for r in rows])
    decided = [by_row.apply(list(r)) for r in rows]
    assert [(i, why) for i, why in rejected] == [(i, why) for i, (_v, why) in enumerate(decided) if why]
    kept = [[format_value(v) for v in values] for values, why in decided if not why]
    chunk_texts = by_chunk.format_columns(cols, texts) if cols and cols[0] else []
    assert [list(row) for row in zip(*chunk_texts, strict=True)] == kept


_INT_TEXTS = _mostly(["1", "2", "3", "7", "12", "25", "30", "007", "0"], [" 7 ", "+3", "-2", "", "x", "1.5", "\u0663"])
_PRICE_TEXTS = _mostly(["12.50", "3.1", "100", "0.000001", "7"], ["0", "-1.00", ".5", "1e3", "", " 3.10 ", "abc", "5."])
_QUANTITY_TEXTS = _mostly(["1", "1", "1", "2"], ["", "0", "-1", "1.5", "x", " 2"])
_STATUS_TEXTS = st.sampled_from(["Complete", "Returned", "returned", "", "Shipped"])
_ITEM_ROWS = st.lists(
    st.tuples(_INT_TEXTS, _INT_TEXTS, _INT_TEXTS, _STATUS_TEXTS, _PRICE_TEXTS, _QUANTITY_TEXTS, st.just("extra")),
    min_size=1,
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(_ITEM_ROWS, _ITEM_ROWS, st.booleans())
def test_a_chunk_decides_exactly_as_row_by_row(first: list[tuple[str, ...]], second: list[tuple[str, ...]],
                                               quantity: bool) -> None:
    """The column-at-a-time path (clean chunks and chunks with bad values alike) rejects the same rows
    for the same reasons and keeps the same values, in the same text, as `apply` one row at a time
    (the reference semantics), over two chunks (uniqueness carries across them), with and without
    the optional quantity column."""
    from datetime import date

    cfg = parse_config(Path(__file__).resolve().parents[2].joinpath("pipeline.yaml").read_text(encoding="utf-8"))
    refs = BatchRefs(cfg)
    refs.tables["orders"] = KeyTable()
    refs.tables["orders"].put_many(list(range(1, 21)), [(date(2025, 3, 1 + k % 3),) for k in range(1, 21)])
    refs.tables["products"] = KeyTable()
    refs.tables["products"].put_many([1, 2, 3, 7, 12, 30], [("Jeans",), ("Tops",), ("Jeans",), ("Socks",), ("Tops",), ("Hats",)])
    header = ["id", "order_id", "product_id", "status", "sale_price", "quantity", "note"]
    if not quantity:
        header = header[:5] + header[6:]
        first = [r[:5] + r[6:] for r in first]
        second = [r[:5] + r[6:] for r in second]
    by_chunk = FileRules(cfg, "order_items", header, refs, {})
    by_row = FileRules(cfg, "order_items", header, refs, {})
    for rows in (first, second):
        assert_same_decisions(by_chunk, by_row, rows)


_ORDER_ROWS = st.lists(
    st.tuples(
        _mostly([str(k) for k in range(1, 60)], ["", "x", "-3", " 8", "2.0", "\u0663"]),
        _mostly(["11", "250", "7", "99999"], ["", "abc", "+5", "1e2"]),
        st.sampled_from(["Complete", "Returned", "", "Cancelled"]),
        _mostly(
            ["2025-03-01 10:00:00", "2025-03-02T23:30:00Z", "2025-03-03 09:00:00.5", "2025-03-04T01:02:03+05:30",
             "2025-03-05 00:00:00.123456"],
            ["", "2025-02-30 10:00:00", "2025-13-01 00:00:00", "yesterday", "2025-03-01", "2025-03-01 25:00:00"],
        ),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(_ORDER_ROWS, _ORDER_ROWS)
def test_a_chunk_of_orders_decides_exactly_as_row_by_row(first: list[tuple[str, ...]], second: list[tuple[str, ...]]) -> None:
    """Orders (a unique key, datetimes with offsets and fractions, days that do not exist): a few bad
    values among good ones, where the fast paths take the good ones, decide as `apply` does."""
    cfg = parse_config(Path(__file__).resolve().parents[2].joinpath("pipeline.yaml").read_text(encoding="utf-8"))
    header = ["order_id", "user_id", "status", "created_at"]
    by_chunk = FileRules(cfg, "orders", header, BatchRefs(cfg), {})
    by_row = FileRules(cfg, "orders", header, BatchRefs(cfg), {})
    for rows in (first, second):
        assert_same_decisions(by_chunk, by_row, rows)
