"""What a client cannot do to the server: slow or vanishing clients, values the log cannot hold, a log table
the configuration no longer fits. Real uvicorn servers on 127.0.0.1."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from _serving import VENV_BIN, ServerProc, read_log, start_server

from loopline.tables import DeltaStore

ROW = {"x": 1.5, "n": 3, "flag": True}
TS = pa.timestamp("us", tz="UTC")
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0


def _configure(root: Path) -> None:
    cfg = root / "loopline.yaml"
    text = cfg.read_text().replace("  keys: [email]\n", "  keys: [email, store]\n  time_column: ts\n")
    text = text.replace(
        "serving:\n", f"serving:\n  header_timeout: {HEADER_TIMEOUT:g}s\n  body_timeout: {BODY_TIMEOUT:g}s\n"
    )
    cfg.write_text(text)


@pytest.fixture(scope="module")
def srv(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    root = tmp_path_factory.mktemp("limits") / "proj"
    shutil.copytree(template, root)
    _configure(root)
    # rows logged before: the key column `store` holds integers
    old = pa.table(
        {
            "request_id": ["old-0"],
            "timestamp": pa.array([datetime(2026, 1, 1, tzinfo=UTC)], TS),
            "store": pa.array([5], pa.int64()),
        }
    )
    DeltaStore(str(root / ".loopline" / "prod" / "tables")).append("inference_log", old)
    s = start_server(root)
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture(scope="module")
def http(srv: ServerProc) -> Iterator[httpx.Client]:
    with srv.client() as c:
        yield c


def _wait_logged(root: Path, ids: list[str], timeout: float = 20.0) -> pa.Table:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = read_log(root)
        got = table.filter(pa.compute.is_in(table.column("request_id"), pa.array(ids)))
        if got.num_rows == len(ids):
            return got
        time.sleep(0.2)
    raise AssertionError(f"rows {ids} not logged within {timeout} s")


# ----------------------------------------------------------------------------- what the log can hold
def test_time_column_is_logged_as_a_timestamp(srv: ServerProc, http: httpx.Client) -> None:
    """A request's model.time_column reaches inference_log as a UTC timestamp: event-time monitoring of
    served traffic reads it (a text column would not compare with the window's bounds)."""
    rows = [{**ROW, "ts": "2011-04-01T05:00:00"}, {**ROW, "ts": "2011-04-01T07:00:00+02:00"}, ROW]
    r = http.post("/invocations", json={"dataframe_records": rows})
    assert r.status_code == 200, r.text
    got = _wait_logged(srv.root, r.json()["request_ids"])
    assert got.schema.field("ts").type == TS
    when = datetime(2011, 4, 1, 5, tzinfo=UTC)
    assert sorted(got.column("ts").to_pylist(), key=str) == [when, when, None]
    bad = http.post("/invocations", json={"dataframe_records": [{**ROW, "ts": "yesterday"}]})
    assert bad.status_code == 422, bad.text
    assert "column 'ts': 'yesterday' at row 0 is not an ISO-8601 datetime (model.time_column)" in bad.json()["message"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"abc"', "key column 'store': 'abc' at row 0 does not fit inference_log's 'store' column, which is int64"),
        ('{"a": 1}', "key column 'store': {'a': 1} at row 0 is not a key value (a string or a number)"),
        ("Infinity", "key column 'store': inf at row 0 is not a key value (not a finite number)"),
    ],
)
def test_key_values_must_fit_the_log(http: httpx.Client, value: str, message: str) -> None:
    body = '{"dataframe_records": [{"x": 1.5, "n": 3, "flag": true, "store": ' + value + "}]}"
    r = http.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert message in r.json()["message"]


def test_a_fitting_key_is_logged(srv: ServerProc, http: httpx.Client) -> None:
    r = http.post("/invocations", json={"dataframe_records": [{**ROW, "store": 7}, {**ROW, "store": "8"}]})
    assert r.status_code == 200, r.text
    got = _wait_logged(srv.root, r.json()["request_ids"])
    assert sorted(got.column("store").to_pylist()) == [7, 8]
    assert not list((srv.root / ".loopline" / "prod" / "spill").glob("rejected/*"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"request_id": "a", "label": Infinity}', "body.label: Infinity is not a label"),
        (b'{"request_id": "a", "label": -Infinity}', "body.label: -Infinity is not a label"),
        (b'{"request_id": "a", "label": NaN}', "body.label: NaN is not a label"),
        (b'{"keys": {"email": Infinity}, "label": 1.0}', "body.keys.email: Infinity is not a key value"),
    ],
)
def test_feedback_refuses_non_finite_numbers(http: httpx.Client, body: bytes, message: str) -> None:
    r = http.post("/feedback", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]


# ----------------------------------------------------------------------------- slow and vanishing clients
def _connect(srv: ServerProc) -> socket.socket:
    host, port = srv.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def _closed_after(
    s: socket.socket, trickle: bytes = b"", every: float = 0.2, limit: float = 10.0
) -> tuple[float, bytes]:
    """Seconds until the server closed ``s`` (trickling ``trickle`` one byte per ``every`` s meanwhile) and
    what it sent before closing."""
    t0 = time.monotonic()
    got = b""
    s.settimeout(every)
    i = 0
    while time.monotonic() - t0 < limit:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            if i < len(trickle):
                try:
                    s.sendall(trickle[i : i + 1])
                except OSError:
                    break
                i += 1
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return time.monotonic() - t0, got


def _still_serving(http: httpx.Client) -> None:
    r = http.post("/invocations", json={"dataframe_records": [ROW]})
    assert r.status_code == 200, r.text


def test_slow_headers_are_cut_off(srv: ServerProc, http: httpx.Client) -> None:
    """A client trickling its request head one byte at a time, or sending nothing, is closed after
    serving.header_timeout; the server keeps answering others meanwhile."""
    slow = _connect(srv)
    slow.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
    idle = _connect(srv)
    _still_serving(http)
    took, got = _closed_after(slow, trickle=b"X-Slow: " + b"a" * 200)
    assert took <= HEADER_TIMEOUT + 2.0 and got == b"", (took, got)
    took, got = _closed_after(idle)
    assert took <= HEADER_TIMEOUT + 2.0 and got == b"", (took, got)
    _still_serving(http)


def test_slow_body_is_408_and_closed(srv: ServerProc, http: httpx.Client) -> None:
    """A client that sends its head but not the body it declared gets 408 after serving.body_timeout, and
    the connection is closed; meanwhile others are served."""
    s = _connect(srv)
    s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    s.sendall(b'{"dataframe_records": [')
    _still_serving(http)
    took, got = _closed_after(s, trickle=b" " * 50)
    assert took <= BODY_TIMEOUT + 2.0, took
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"serving.body_timeout" in got and b"connection: close" in got.lower()
    _still_serving(http)
    assert 'endpoint="invocations",status="408"' in http.get("/metrics").text


def test_client_disconnect_is_not_a_500(srv: ServerProc, http: httpx.Client) -> None:
    """Clients that hang up mid-body, or right after sending a whole request, are never counted (or
    logged) as server errors."""
    for endpoint, body in (("/invocations", b'{"dataframe_records": ['), ("/feedback", b'{"request_id": ')):
        s = _connect(srv)
        head = f"POST {endpoint} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        s.sendall(head.encode() + body)
        time.sleep(0.2)
        s.close()
    whole = b'{"dataframe_records": [{"x": 1.5, "n": 3, "flag": true}]}'
    s = _connect(srv)
    s.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(whole)}\r\n\r\n".encode()
        + whole
    )
    s.close()
    time.sleep(0.5)
    _still_serving(http)
    text = http.get("/metrics").text
    assert not re.search(r'loopline_requests_total\{[^}]*status="5\d\d"', text), [
        line for line in text.splitlines() if 'status="5' in line
    ]
    assert re.search(r'loopline_requests_total\{endpoint="invocations",status="499"\} [1-9]', text), text
    assert "internal error" not in srv.output() and "Traceback" not in srv.output(), srv.output()[-3000:]


# ----------------------------------------------------------------------------- a log the config no longer fits
def test_redact_change_on_an_existing_log_refuses_to_start(project: Path) -> None:
    """`n` was logged as numbers; hashing it now would send every row to spill/rejected/ while /ready said
    ready. `loopline serve` refuses to start instead, naming the column and both types."""
    store = DeltaStore(str(project / ".loopline" / "prod" / "tables"))
    store.append("inference_log", pa.table({"request_id": ["old-0"], "n": pa.array([3], pa.int64())}))
    cfg = project / "loopline.yaml"
    cfg.write_text(cfg.read_text().replace("redact: {email: hash}", "redact: {email: hash, n: hash}"))
    p = subprocess.run(
        [str(VENV_BIN / "loopline"), "serve", "-p", str(project), "-e", "prod", "--port", "1"],
        env={**os.environ, "LOOPLINE_REDACT_SALT": "s"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = " ".join(p.stderr.split())
    assert p.returncode == 2, p.stderr
    assert "the existing inference_log table cannot take this server's rows: 'n' is logged as string but" in err
    assert "inference_log stores it as int64" in err and "spill/rejected/" in err and "Traceback" not in err
