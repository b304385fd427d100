"""`kpipe serve` as a user runs it: the emulator plus `chalice local` in a subprocess. A batch uploaded
file by file with a plain S3 client (as `aws --endpoint-url ... s3 cp` would) flows through S3 events,
the Lambda handler, the state machine and the tasks; the KPI API then serves the same numbers as
`kpipe process`, answers 400 for a bad date, and Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.config import default_config_path, load_config
from kpipe.generate import generate_batches
from kpipe.process import process_batches

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_for_endpoints(proc: subprocess.Popen[str], deadline: float) -> dict[str, str]:
    found: dict[str, str] = {}
    assert proc.stdout is not None
    while time.monotonic() < deadline and len(found) < 2:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(r"AWS endpoint \(moto\):\s+(\S+)", line):
            found["aws"] = m.group(1)
        if m := re.search(r"KPI API:\s+(\S+)", line):
            found["api"] = m.group(1)
    return found


def test_serve_processes_an_upload_and_serves_its_kpis(tmp_path: Path) -> None:
    batch = generate_batches(tmp_path / "in", 30, seed=31, files_per_dataset=2, days=3)[0]
    expected = process_batches(load_config(default_config_path()), [batch], tmp_path / "process")
    assert expected["batches"][0]["status"] == "SUCCEEDED"
    orders_expected = json.loads((tmp_path / "process" / "OrderKPI.json").read_text())
    dates = sorted(item["order_date"] for item in orders_expected)

    api_port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kpipe.cli", "serve", "--api-port", str(api_port), "--settle-seconds", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        endpoints = _wait_for_endpoints(proc, time.monotonic() + 90)
        assert set(endpoints) == {"aws", "api"}, endpoints
        api = endpoints["api"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # chalice local may print before it accepts connections
            try:
                status, _ = _get(f"{api}/kpis/orders/{dates[0]}")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        assert status == 404  # nothing uploaded yet

        s3 = boto3.client(
            "s3", endpoint_url=endpoints["aws"], region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        for path in sorted(p for p in batch.rglob("*.csv")):
            s3.upload_file(str(path), "kpipe-local", f"raw-data/{path.relative_to(batch).as_posix()}")

        url = f"{api}/kpis/orders?from={dates[0]}&to={dates[-1]}"
        items: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, body = _get(url)
            items = body.get("items", []) if status == 200 else []
            if len(items) == len(orders_expected):
                break
            time.sleep(1)
        by_date = {item["order_date"]: item for item in items}
        assert by_date == {item["order_date"]: item for item in orders_expected}

        status, body = _get(f"{api}/kpis/orders/2025-3-1")
        assert status == 400 and "YYYY-MM-DD" in body["Message"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group, as in a terminal
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0
    assert _group_members(proc.pid) == []  # no chalice local or task process left behind


def _group_members(pgid: int) -> list[int]:
    """Live processes of a process group, from /proc (field 5 of /proc/PID/stat is the group)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members
