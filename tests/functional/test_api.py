"""The KPI read API through chalice's test client, on moto: 200s with JSON numbers, clear 400s and 404s.

The seeded items are docs/semantics.md's worked example, so the expected numbers are the specified ones.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from chalice.test import Client

from chalicelib.config import default_config_path, load_config
from chalicelib.kpi_store import KpiStore

if TYPE_CHECKING:
    from tests.functional.conftest import KpipeEnv

BID = "b-0123456789abcdef0123"


@pytest.fixture(scope="module")
def seeded(shared_kpipe_env: KpipeEnv) -> KpipeEnv:
    """Seeded once for the module: every test here only reads these items."""
    store = KpiStore(shared_kpipe_env.dynamodb, load_config(default_config_path()))
    d = Decimal
    store.replace_dates(
        "OrderKPI",
        {
            "2025-03-01": [
                {
                    "order_date": "2025-03-01",
                    "total_orders": 1,
                    "total_revenue": d("49.50"),
                    "total_items_sold": 3,
                    "return_rate": d("1.0"),
                    "unique_customers": 1,
                }
            ],
            "2025-03-02": [
                {
                    "order_date": "2025-03-02",
                    "total_orders": 1,
                    "total_revenue": d("10.00"),
                    "total_items_sold": 1,
                    "return_rate": d("0.0"),
                    "unique_customers": 1,
                }
            ],
        },
    )

    def cat(category: str, date: str, revenue: str, aov: str, rate: str) -> dict[str, Any]:
        return {
            "category": category,
            "order_date": date,
            "daily_revenue": d(revenue),
            "avg_order_value": d(aov),
            "avg_return_rate": d(rate),
        }

    store.replace_dates(
        "CategoryKPI",
        {
            "2025-03-01": [cat("Books", "2025-03-01", "9.50", "9.50", "1.0"), cat("Toys", "2025-03-01", "40.00", "40.00", "0.0")],
            "2025-03-02": [cat("Books", "2025-03-02", "10.00", "10.00", "0.0")],
            "2025-03-05": [cat("Home & Garden", "2025-03-05", "12.25", "12.25", "0.5")],
        },
    )
    return shared_kpipe_env


@pytest.fixture
def chalice_client(shared_chalice_client: Client, seeded: KpipeEnv) -> Client:
    return shared_chalice_client


@pytest.fixture
def kpipe_env(seeded: KpipeEnv) -> KpipeEnv:
    return seeded


def test_order_kpi_of_a_date(chalice_client: Client, seeded: KpipeEnv) -> None:
    response = chalice_client.http.get("/kpis/orders/2025-03-01")
    assert response.status_code == 200
    body = json.loads(response.body)
    assert body == {
        "order_date": "2025-03-01",
        "total_orders": 1,
        "total_revenue": 49.5,
        "total_items_sold": 3,
        "return_rate": 1.0,
        "unique_customers": 1,
    }
    assert isinstance(body["total_orders"], int)  # ints stay ints


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        ("/kpis/orders/2025-03-03", 404, "no OrderKPI for 2025-03-03"),
        ("/kpis/orders/2025-3-1", 400, "YYYY-MM-DD"),
        ("/kpis/orders/20250301", 400, "YYYY-MM-DD"),
        ("/kpis/orders/2025-13-45", 400, "not a calendar date"),
        ("/kpis/orders/2025-02-29", 400, "not a calendar date"),
    ],
)
def test_order_kpi_errors(chalice_client: Client, seeded: KpipeEnv, path: str, status: int, needle: str) -> None:
    response = chalice_client.http.get(path)
    assert response.status_code == status
    assert needle in response.json_body["Message"]


def test_orders_between_dates(chalice_client: Client, seeded: KpipeEnv) -> None:
    response = chalice_client.http.get("/kpis/orders?from=2025-02-28&to=2025-03-31")
    assert response.status_code == 200
    body = response.json_body
    assert body["from"] == "2025-02-28" and body["to"] == "2025-03-31"
    assert [(i["order_date"], i["total_revenue"]) for i in body["items"]] == [("2025-03-01", 49.5), ("2025-03-02", 10)]
    empty = chalice_client.http.get("/kpis/orders?from=2024-01-01&to=2024-12-31")  # 366 days: the cap, allowed
    assert empty.status_code == 200 and empty.json_body["items"] == []


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("", "from is required"),
        ("?from=2025-03-01", "to is required"),
        ("?from=2025-03-02&to=2025-03-01", "after"),
        ("?from=2024-01-01&to=2025-01-01", "367 days is longer than 366"),
        ("?from=yesterday&to=2025-03-01", "YYYY-MM-DD"),
    ],
)
def test_orders_between_errors(chalice_client: Client, seeded: KpipeEnv, query: str, needle: str) -> None:
    response = chalice_client.http.get(f"/kpis/orders{query}")
    assert response.status_code == 400
    assert needle in response.json_body["Message"]


def test_category_between_dates_uses_the_sort_key_range(chalice_client: Client, seeded: KpipeEnv) -> None:
    body = chalice_client.http.get("/kpis/categories/Books?from=2025-03-02&to=2025-03-31").json_body
    assert body["category"] == "Books"
    assert body["items"] == [
        {"category": "Books", "order_date": "2025-03-02", "daily_revenue": 10, "avg_order_value": 10, "avg_return_rate": 0}
    ]
    everything = chalice_client.http.get("/kpis/categories/Books").json_body
    assert [i["order_date"] for i in everything["items"]] == ["2025-03-01", "2025-03-02"]
    assert everything["from"] is None and everything["to"] is None
    known_but_empty = chalice_client.http.get("/kpis/categories/Toys?from=2025-04-01&to=2025-04-30")
    assert known_but_empty.status_code == 200 and known_but_empty.json_body["items"] == []


def test_category_names_are_url_decoded(chalice_client: Client, seeded: KpipeEnv) -> None:
    response = chalice_client.http.get("/kpis/categories/Home%20%26%20Garden")
    assert response.status_code == 200
    (item,) = response.json_body["items"]
    assert item["category"] == "Home & Garden"
    assert item["avg_return_rate"] == 0.5


def test_category_errors(chalice_client: Client, seeded: KpipeEnv) -> None:
    unknown = chalice_client.http.get("/kpis/categories/Garden")
    assert unknown.status_code == 404 and "Garden" in unknown.json_body["Message"]
    reversed_range = chalice_client.http.get("/kpis/categories/Books?from=2025-03-02&to=2025-03-01")
    assert reversed_range.status_code == 400
    bad = chalice_client.http.get("/kpis/categories/Books?from=03/01/2025")
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.json_body["Message"]


def test_categories_of_a_date_through_the_gsi(chalice_client: Client, seeded: KpipeEnv) -> None:
    body = chalice_client.http.get("/kpis/dates/2025-03-01/categories").json_body
    assert body["order_date"] == "2025-03-01"
    assert [(i["category"], i["daily_revenue"], i["avg_return_rate"]) for i in body["items"]] == [
        ("Books", 9.5, 1),
        ("Toys", 40, 0),
    ]
    assert chalice_client.http.get("/kpis/dates/2025-03-03/categories").status_code == 404
    assert chalice_client.http.get("/kpis/dates/March/categories").status_code == 400


def test_batch_report_pending_and_unknown(chalice_client: Client, kpipe_env: KpipeEnv) -> None:
    assert chalice_client.http.get(f"/batches/{BID}").status_code == 404
    bad = chalice_client.http.get("/batches/..%2Fconfig")
    assert bad.status_code == 400 and "not a batch id" in bad.json_body["Message"]

    kpipe_env.put(f"reports/{BID}/manifest.json", json.dumps({"batch_id": BID, "objects": [{"key": "raw-data/products.csv"}]}))
    pending = chalice_client.http.get(f"/batches/{BID}").json_body
    assert pending["status"] == "pending"
    assert pending["manifest"]["objects"] == [{"key": "raw-data/products.csv"}]

    report = {"batch_id": BID, "status": "SUCCEEDED", "datasets": {"orders": {"rows_in": 3, "rows_valid": 2, "rows_rejected": 1}}}
    kpipe_env.put(f"reports/{BID}/report.json", json.dumps(report))
    done = chalice_client.http.get(f"/batches/{BID}").json_body
    assert done["status"] == "SUCCEEDED"
    assert done["report"] == report


def test_unknown_route_is_not_served(chalice_client: Client, kpipe_env: KpipeEnv) -> None:
    assert chalice_client.http.get("/kpis/unknown").status_code in (403, 404)
