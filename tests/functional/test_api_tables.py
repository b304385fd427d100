"""GET /kpis/{table}: any KPI table of the pipeline.yaml in force, through chalice's test client on moto.

The config is tests/configs/extra_tables.yaml (BrandKPI keyed [brand, order_date], WeeklyKPI keyed
[order_week]) plus a numeric-keyed table spanning every date (UserKPI) and a 3-field key (BrandDaily); each
parameter kind, pagination, the 400s and 404s, and the older routes beside it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from chalice.test import Client

from chalicelib import trigger
from chalicelib.config import PipelineConfig, parse_config
from chalicelib.kpi_store import KpiStore
from tests.functional.conftest import CONFIG_KEY, KpipeEnv, _client, create_shape_table, kpipe_stack

EXTRA = Path(__file__).resolve().parents[1] / "configs" / "extra_tables.yaml"
D = Decimal
DAY1, DAY2 = "2025-03-01", "2025-03-02"
BRANDS = ["Acme", "Bolt", "Cove", "Dune", "Echo"]


def config() -> tuple[str, PipelineConfig]:
    doc = yaml.safe_load(EXTRA.read_text())
    doc["kpis"]["UserKPI"] = {"key": ["user_id"], "metrics": {"orders": {"count": "order_id", "from": "orders"}}}
    doc["kpis"]["BrandDaily"] = {
        "key": ["brand", "category", "order_date"],
        "metrics": {"top_price": {"max": "sale_price", "from": "order_items"}},
    }
    text = yaml.safe_dump(doc, sort_keys=False)
    return text, parse_config(text)


@pytest.fixture(scope="module")
def env() -> Iterator[KpipeEnv]:
    with kpipe_stack() as stack:
        text, cfg = config()
        stack.s3.put_object(Bucket=stack.bucket, Key=CONFIG_KEY, Body=text.encode())
        trigger.clear_config_cache()
        store = KpiStore(stack.dynamodb, cfg)
        for name in ("BrandKPI", "WeeklyKPI", "UserKPI", "BrandDaily"):
            create_shape_table(stack.dynamodb, store.table(name).shape)
        store.replace_periods("BrandKPI", {
            DAY1: [{"brand": b, "order_date": DAY1, "revenue": D("10.50"), "avg_price": D(i)} for i, b in enumerate(BRANDS)],
            DAY2: [{"brand": "Acme", "order_date": DAY2, "revenue": D("3"), "avg_price": D("1.25")}],
        })
        store.replace_periods("WeeklyKPI", {"2025-02-24": [{"order_week": "2025-02-24", "top_price": D(5), "customers": 2}],
                                            "2025-03-03": [{"order_week": "2025-03-03", "top_price": D("7.5"), "customers": 1}]})
        store.replace_periods("UserKPI", {"*": [{"user_id": D(u), "orders": u * 2} for u in (1, 2, 3)]})
        store.replace_periods("BrandDaily", {DAY1: [
            {"brand": "Acme", "category": c, "order_date": DAY1, "top_price": D(p)} for c, p in (("Jeans", 30), ("Tops", 20))
        ]})
        store.replace_periods("CategoryKPI", {DAY1: [{"category": c, "order_date": DAY1, "daily_revenue": D(1)} for c in ("Tops", "Jeans")]})
        store.replace_periods("OrderKPI", {DAY1: [{"order_date": DAY1, "total_orders": 2}]})
        yield stack


@pytest.fixture(scope="module")
def client(env: KpipeEnv, tmp_path_factory: pytest.TempPathFactory) -> Client:
    return _client(tmp_path_factory.mktemp("chalice-project"))


def get(client: Client, path: str, status: int = 200) -> Any:
    response = client.http.get(path)
    assert response.status_code == status, response.body
    return response.json_body


def test_equality_on_the_hash_key_and_a_range_on_the_range_key(client: Client) -> None:
    body = get(client, "/kpis/BrandKPI?brand=Acme")
    assert body == {
        "table": "BrandKPI",
        "items": [
            {"brand": "Acme", "order_date": DAY1, "revenue": 10.5, "avg_price": 0},
            {"brand": "Acme", "order_date": DAY2, "revenue": 3, "avg_price": 1.25},
        ],
        "next": None,
    }
    assert [i["order_date"] for i in get(client, f"/kpis/BrandKPI?brand=Acme&from={DAY2}")["items"]] == [DAY2]
    assert [i["order_date"] for i in get(client, f"/kpis/BrandKPI?brand=Acme&to={DAY1}")["items"]] == [DAY1]
    assert get(client, f"/kpis/BrandKPI?brand=Acme&order_date={DAY2}")["items"][0]["revenue"] == 3


def test_the_period_field_alone_reads_the_period_index_and_an_index_can_be_named(client: Client) -> None:
    body = get(client, f"/kpis/BrandKPI?order_date={DAY1}")
    assert [i["brand"] for i in body["items"]] == BRANDS  # order_date-index, sorted by its range key
    assert [i["brand"] for i in get(client, f"/kpis/BrandKPI?order_date={DAY1}&from=Bolt&to=Dune")["items"]] == BRANDS[1:4]
    named = get(client, f"/kpis/CategoryKPI?index=order_date-index&order_date={DAY1}")
    assert [i["category"] for i in named["items"]] == ["Jeans", "Tops"]
    bad = get(client, "/kpis/CategoryKPI?index=by-brand&order_date=x", 400)
    assert "by-brand" in bad["Message"] and "order_date-index" in bad["Message"]
    assert "give order_date=" in get(client, "/kpis/CategoryKPI?index=order_date-index&category=Tops", 400)["Message"]


def test_week_numeric_and_three_field_keys(client: Client) -> None:
    assert get(client, "/kpis/WeeklyKPI?order_week=2025-03-03")["items"] == [
        {"order_week": "2025-03-03", "top_price": 7.5, "customers": 1}
    ]
    user = get(client, "/kpis/UserKPI?user_id=2")["items"]
    assert user == [{"user_id": 2, "orders": 4}] and isinstance(user[0]["user_id"], int)
    assert "not a number" in get(client, "/kpis/UserKPI?user_id=two", 400)["Message"]
    items = get(client, "/kpis/BrandDaily?brand=Acme")["items"]
    assert [(i["category"], i["top_price"]) for i in items] == [("Jeans", 30), ("Tops", 20)]
    assert all("_sk" not in i for i in items)
    assert get(client, f"/kpis/BrandDaily?brand=Acme&category=Tops&order_date={DAY1}")["items"][0]["top_price"] == 20


def test_a_scan_pages_through_every_item_with_next(client: Client) -> None:
    seen: list[tuple[str, str]] = []
    path, pages = "/kpis/BrandKPI?limit=2", 0
    while True:
        body = get(client, path)
        assert len(body["items"]) <= 2
        seen += [(i["brand"], i["order_date"]) for i in body["items"]]
        pages += 1
        if body["next"] is None:
            break
        path = f"/kpis/BrandKPI?limit=2&next={body['next']}"
    assert sorted(seen) == sorted([(b, DAY1) for b in BRANDS] + [("Acme", DAY2)]) and pages >= 3
    first = get(client, "/kpis/UserKPI?limit=1")
    assert len(first["items"]) == 1 and first["next"]
    assert len(get(client, f"/kpis/UserKPI?limit=1000&next={first['next']}")["items"]) == 2  # numbers in the token
    assert len(get(client, "/kpis/UserKPI")["items"]) == 3  # default limit


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("?colour=red", "unknown query parameter colour for BrandKPI; allowed: brand, order_date, from, to, index, limit, next"),
        ("?limit=0", "an integer from 1 to 1000"),
        ("?limit=1001", "an integer from 1 to 1000"),
        ("?limit=ten", "an integer from 1 to 1000"),
        ("?next=not-a-token", "not a page token"),
        (f"?from={DAY1}", "needs a key condition"),
        (f"?brand=Acme&from={DAY2}&to={DAY1}", "after"),
        (f"?brand=Acme&order_date={DAY1}&from={DAY1}", "both bound order_date"),
        ("?brand=", "brand is empty"),
    ],
)
def test_bad_requests_say_what_is_allowed(client: Client, query: str, needle: str) -> None:
    assert needle in get(client, f"/kpis/BrandKPI{query}", 400)["Message"]


def test_a_token_of_another_query_is_refused(client: Client) -> None:
    # (a token of another query on the same table: DynamoDB refuses it and the route answers 400 "same
    # query"; moto accepts any ExclusiveStartKey, so that branch is not exercised here)
    forged = base64.urlsafe_b64encode(json.dumps({"brand": {"X": 1}}).encode()).decode()
    assert "not a page token" in get(client, f"/kpis/BrandKPI?next={forged}", 400)["Message"]
    assert "range key" in get(client, f"/kpis/UserKPI?user_id=1&from={DAY1}", 400)["Message"]


def test_unknown_tables_are_404s_naming_the_tables(client: Client) -> None:
    message = get(client, "/kpis/NoSuchKPI", 404)["Message"]
    assert "NoSuchKPI" in message and "OrderKPI, CategoryKPI, BrandKPI, WeeklyKPI, UserKPI, BrandDaily" in message


def test_the_older_routes_still_answer_beside_it(client: Client) -> None:
    assert get(client, f"/kpis/orders/{DAY1}") == {"order_date": DAY1, "total_orders": 2}
    assert [i["category"] for i in get(client, f"/kpis/dates/{DAY1}/categories")["items"]] == ["Jeans", "Tops"]
    assert get(client, f"/kpis/OrderKPI?order_date={DAY1}")["items"] == [{"order_date": DAY1, "total_orders": 2}]
    assert get(client, "/kpis/categories/Tops")["items"][0]["daily_revenue"] == 1
