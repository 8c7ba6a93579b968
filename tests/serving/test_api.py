"""One real server (module-scoped) for the protocol, validation, feedback, metrics and OpenAPI tests."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving import ServerProc, log_rows, read_log, schemathesis_failures, start_server

ROW = {"x": 1.5, "n": 3, "flag": True}


@pytest.fixture(scope="module")
def srv(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    import shutil

    root = tmp_path_factory.mktemp("api") / "proj"
    shutil.copytree(template, root)
    s = start_server(root)
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def http(srv: ServerProc) -> Iterator[httpx.Client]:
    with srv.client() as c:
        yield c


@pytest.fixture(scope="module")
def expected(http: httpx.Client) -> float:
    r = http.post("/invocations", json={"dataframe_records": [ROW]})
    assert r.status_code == 200, r.text
    return float(r.json()["predictions"][0])


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["x", "n", "flag"], "data": [[1.5, 3, True]]}},
        {"dataframe_split": {"columns": ["flag", "x", "n"], "data": [[True, 1.5, 3]]}},
        {"dataframe_records": [ROW]},
        {"instances": [ROW]},
        {"instances": [[1.5, 3, True]]},
        {"inputs": {"x": [1.5], "n": [3], "flag": [True]}},
        {"inputs": [ROW], "params": {}},
        {"dataframe_records": [{**ROW, "n": 3.0}]},
    ],
    ids=[
        "split",
        "split-reordered",
        "records",
        "instances",
        "instances-rows",
        "inputs",
        "inputs-records",
        "integral-float",
    ],
)
def test_mlflow_json_formats(http: httpx.Client, expected: float, payload: dict) -> None:
    r = http.post("/invocations", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == [pytest.approx(expected)]
    assert body["model_version"] == "1"
    assert len(body["request_ids"]) == 1


def test_csv_and_batch(http: httpx.Client, expected: float) -> None:
    r = http.post("/invocations", content=b"x,n,flag\n1.5,3,true\n1.5,3,1\n", headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [pytest.approx(expected)] * 2
    assert len(set(r.json()["request_ids"])) == 2


def test_matches_pyfunc(srv: ServerProc, http: httpx.Client) -> None:
    """The numpy fast path returns what mlflow.pyfunc returns for the same rows."""
    import mlflow
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.uniform(0, 50, 20), "n": rng.integers(0, 10, 20), "flag": rng.integers(0, 2, 20) == 1})
    uri = f"sqlite:///{srv.root / '.loopline' / 'prod' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # other tests leave mlflow's global registry URI pointing elsewhere
    ref = mlflow.pyfunc.load_model("models:/prod.demo/1").predict(df)
    r = http.post("/invocations", json={"dataframe_split": df.to_dict(orient="split", index=False)})
    assert r.status_code == 200, r.text
    assert np.allclose(r.json()["predictions"], ref)


BAD = [
    ({"dataframe_records": [{"x": 1.5, "flag": True}]}, 400, r"missing column 'n'"),
    ({"dataframe_split": {"columns": ["x", "flag"], "data": [[1.5, True]]}}, 400, r"missing column 'n'"),
    ({"dataframe_records": [{**ROW, "x": "abc"}]}, 400, r"column 'x': 'abc' at row 0 is a string, expected double"),
    (
        {"dataframe_records": [{**ROW, "n": None}]},
        422,
        r"column 'n': null/NaN at row 0 is in an integer \(long\) column",
    ),
    ({"dataframe_records": [{**ROW, "n": 2.5}]}, 422, r"column 'n': 2.5 at row 0 is not an integer; expected long"),
    ({"dataframe_records": [{**ROW, "n": 2**63 - 1}]}, 422, r"column 'n': 9223372036854775807 at row 0 is beyond"),
    ({"dataframe_records": [{**ROW, "n": 2**64}]}, 422, r"column 'n': 18446744073709551616 at row 0 is out of range"),
    ({"dataframe_records": [{**ROW, "flag": "yes"}]}, 400, r"column 'flag': 'yes' at row 0 is a string, expected bool"),
    ({"dataframe_records": []}, 400, r"no rows"),
    ({"inputs": {}}, 400, r"no rows"),
    ({}, 400, r"exactly one of dataframe_split"),
    ({"dataframe_records": [ROW], "instances": [ROW]}, 400, r"got dataframe_records, instances"),
    ({"dataframe_records": [ROW], "colums": 1}, 400, r"unknown field\(s\) \['colums'\]"),
    ({"dataframe_split": {"columns": ["x", "n", "flag"], "data": [[1.5, 3]]}}, 400, r"has 2 values, expected 3"),
    ([1, 2], 400, r"must be an object"),
]


@pytest.mark.parametrize(("payload", "status", "message"), BAD)
def test_bad_json_inputs(http: httpx.Client, payload: object, status: int, message: str) -> None:
    r = http.post("/invocations", json=payload)
    assert r.status_code == status, r.text
    assert r.json()["error_code"]
    import re

    assert re.search(message, r.json()["message"]), r.json()["message"]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "message"),
    [
        (b'{"dataframe_records": [', "application/json", 400, "malformed JSON"),
        (b"", "application/json", 400, "empty request body"),
        (
            b'{"dataframe_records": [{"x": NaN, "n": NaN, "flag": true}]}',
            "application/json",
            422,
            "column 'n': NaN at row 0 is in an integer",
        ),
        (
            b'{"dataframe_records": [{"x": Infinity, "n": 1, "flag": true}]}',
            "application/json",
            422,
            "inf at row 0 is infinite",
        ),
        (b'{"dataframe_records": [{"x": -Infinity, "n": 1, "flag": true}]}', "application/json", 422, "-inf at row 0"),
        (b"x,n,flag\n1.5,3\n", "text/csv", 400, "malformed CSV: line 2 has 2 fields"),
        (b"x,n,flag\n1.5,abc,true\n", "text/csv", 400, "column 'n': 'abc' at row 0 is not an integer"),
        (b"x,n,flag\n1.5,,true\n", "text/csv", 422, "null/NaN at row 0 is in an integer"),
        (b"x,n,flag\n1.5,9223372036854775807,true\n", "text/csv", 422, "9223372036854775807 at row 0 is beyond"),
        (b"x,n,flag\n", "text/csv", 400, "no rows"),
        (b"\xff\xfe", "text/csv", 400, "not UTF-8"),
        (b"a=1", "application/x-www-form-urlencoded", 415, "unsupported Content-Type"),
    ],
)
def test_bad_raw_inputs(http: httpx.Client, body: bytes, ctype: str, status: int, message: str) -> None:
    r = http.post("/invocations", content=body, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert message in r.json()["message"]


def test_body_limit_413(http: httpx.Client) -> None:
    rows = [[1.5, 3, True]] * 2000
    r = http.post("/invocations", json={"dataframe_split": {"columns": ["x", "n", "flag"], "data": rows}})
    assert r.status_code == 413
    assert "over the limit of 20000 bytes (serving.max_body_bytes)" in r.json()["message"]

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to check up front
        yield b'{"dataframe_split": {"columns": ["x","n","flag"], "data": ['
        for _ in range(3000):
            yield b"[1.5, 3, true],"
        yield b"[1.5, 3, true]]}}"

    r = http.post("/invocations", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


# ----------------------------------------------------------------------------- V2
def _v2(x: list[float], n: list[int], flag: list[bool]) -> dict:
    k = len(x)
    return {
        "id": "abc",
        "inputs": [
            {"name": "x", "shape": [k], "datatype": "FP64", "data": x},
            {"name": "n", "shape": [k, 1], "datatype": "INT64", "data": [[v] for v in n]},
            {"name": "flag", "shape": [k], "datatype": "BOOL", "data": flag},
        ],
    }


def test_v2_json(http: httpx.Client, expected: float) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2").json()["name"] == "loopline"
    meta = http.get("/v2/models/prod.demo").json()
    assert meta["versions"] == ["1"]
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("x", "FP64"), ("n", "INT64"), ("flag", "BOOL")]
    assert http.get("/v2/models/demo/versions/1/ready").json() == {"name": "demo", "ready": True}
    r = http.post("/v2/models/prod.demo/infer", json=_v2([1.5, 1.5], [3, 3], [True, True]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "abc" and out["model_version"] == "1"
    assert out["outputs"][0]["datatype"] == "FP64" and out["outputs"][0]["shape"] == [2]
    assert out["outputs"][0]["data"] == [pytest.approx(expected)] * 2
    one_tensor = {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1.5, 3, 1]}]}
    r = http.post("/v2/models/prod.demo/versions/1/infer", json=one_tensor)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [pytest.approx(expected)]


@pytest.mark.parametrize(
    ("path", "payload", "status", "message"),
    [
        ("/v2/models/nope/infer", _v2([1.0], [1], [True]), 404, "unknown model 'nope'"),
        ("/v2/models/prod.demo/versions/9/infer", _v2([1.0], [1], [True]), 404, "version '9' is not served"),
        ("/v2/models/prod.demo/infer", {"inputs": []}, 400, "non-empty list"),
        (
            "/v2/models/prod.demo/infer",
            {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0]}]},
            400,
            "data has 1 values, shape says 2",
        ),
        ("/v2/models/prod.demo/infer", {"inputs": _v2([1.0], [1], [True])["inputs"][:2]}, 400, "missing input 'flag'"),
        (
            "/v2/models/prod.demo/infer",
            {
                "inputs": [
                    *_v2([1.0], [1], [True])["inputs"][:2],
                    {"name": "flag", "shape": [1], "datatype": "FP32", "data": [1.0]},
                ]
            },
            400,
            "expected boolean",
        ),
        (
            "/v2/models/prod.demo/infer",
            {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1.5]}]},
            400,
            "value 1.5 does not match datatype INT64",
        ),
        (
            "/v2/models/prod.demo/infer",
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]},
            400,
            "datatype must be one of",
        ),
    ],
)
def test_v2_errors(http: httpx.Client, path: str, payload: dict, status: int, message: str) -> None:
    r = http.post(path, json=payload)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_tritonclient(srv: ServerProc, expected: float) -> None:
    """A real Open Inference Protocol V2 client, binary tensors both ways (its default) and JSON."""
    tc = pytest.importorskip("tritonclient.http")
    client = tc.InferenceServerClient(url=srv.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("prod.demo")
    meta = client.get_model_metadata("prod.demo")
    assert [i["name"] for i in meta["inputs"]] == ["x", "n", "flag"]
    for binary in (True, False):
        inputs = []
        for name, arr, dt in (
            ("x", np.array([1.5, 1.5]), "FP64"),
            ("n", np.array([3, 3], dtype=np.int64), "INT64"),
            ("flag", np.array([True, True]), "BOOL"),
        ):
            t = tc.InferInput(name, list(arr.shape), dt)
            t.set_data_from_numpy(arr, binary_data=binary)
            inputs.append(t)
        outputs = None if binary else [tc.InferRequestedOutput("predict", binary_data=False)]
        res = client.infer("prod.demo", inputs, outputs=outputs)
        assert np.allclose(res.as_numpy("predict"), [expected, expected])


# ----------------------------------------------------------------------------- feedback, log, metrics
def test_feedback_and_log(srv: ServerProc, http: httpx.Client) -> None:
    r = http.post("/invocations", json={"dataframe_records": [{**ROW, "email": "ann@example.com"}]})
    rid = r.json()["request_ids"][0]
    r = http.post("/feedback", json={"request_id": rid, "label": 12.0})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["unknown_request_ids"] == []
    r = http.post(
        "/feedback",
        json=[
            {"request_id": "nope-0", "label": 1},
            {"keys": {"email": "b@x"}, "label": 2.5, "received_at": "2026-01-01T00:00:00Z"},
        ],
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2 and r.json()["unknown_request_ids"] == ["nope-0"]
    for payload, message in (
        ({"label": 1}, "needs request_id or keys"),
        ({"request_id": "a"}, "label: Field required"),
        ({"request_id": "a", "label": "high"}, "must be a number for a regression model"),
        ({"keys": {"zip": 1}, "label": 1}, "['zip'] are not key columns"),
        ({"request_id": "a", "label": 1, "extra": 1}, "extra: Extra inputs are not permitted"),
    ):
        r = http.post("/feedback", json=payload)
        assert r.status_code == 422, r.text
        assert message in r.json()["error"]
    from deltalake import DeltaTable

    fb = DeltaTable(str(srv.root / ".loopline" / "prod" / "tables" / "feedback")).to_pyarrow_table()
    assert fb.num_rows == 3
    assert {"request_id", "email", "label", "received_at", "_source"} <= set(fb.column_names)
    assert str(fb.schema.field("received_at").type) == "timestamp[us, tz=UTC]"


def test_metrics(http: httpx.Client) -> None:
    http.post("/invocations", json={"dataframe_records": [ROW]})
    http.post("/invocations", json={})  # a 400, counted by status
    text = http.get("/metrics").text
    for name in (
        "loopline_requests_total",
        "loopline_request_latency_seconds_bucket",
        "loopline_prediction_value",
        'loopline_model_info{model="prod.demo"',
        "loopline_log_buffer_rows",
        "loopline_log_rows_flushed_total",
        "loopline_log_flush_failures_total",
        "loopline_model_reloads_total",
        "loopline_range_violations_total",
    ):
        assert name in text, name
    assert 'endpoint="invocations",status="400"' in text
    # the committer process commits the logged rows; its counters are part of every worker's /metrics
    deadline = time.monotonic() + 15
    while not re.search(r"^loopline_log_rows_flushed_total [1-9]", text, re.M):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
        text = http.get("/metrics").text
    assert re.search(r"^loopline_log_rows_staged_total [1-9]", text, re.M), text


def test_openapi_documents_everything(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    paths = doc["paths"]
    for p in (
        "/invocations",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/feedback",
        "/health",
        "/ready",
        "/metrics",
    ):
        assert p in paths, p
    body = paths["/invocations"]["post"]["requestBody"]["content"]
    assert {"application/json", "text/csv"} <= set(body)
    assert "requestBody" in paths["/v2/models/{name}/infer"]["post"]
    assert "FeedbackItem" in doc["components"]["schemas"]


def test_schemathesis_no_5xx(srv: ServerProc) -> None:
    """Property-based requests generated from the OpenAPI document never get a 5xx."""
    failures = schemathesis_failures(srv.url)
    assert not failures, "\n".join(failures[:10])


def test_log_rows_match_and_types(srv: ServerProc, http: httpx.Client) -> None:
    """Everything predicted so far is in inference_log after a flush interval (this server keeps running)."""
    import time

    metrics = http.get("/metrics").text
    line = next(ln for ln in metrics.splitlines() if ln.startswith("loopline_predicted_rows_total"))
    rows = int(float(line.split()[1]))
    deadline = time.monotonic() + 10
    while log_rows(srv.root) < rows and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log_rows(srv.root) == rows
    t = read_log(srv.root)
    assert t.column_names[:8] == [
        "request_id",
        "timestamp",
        "model_name",
        "model_version",
        "endpoint",
        "status",
        "latency_ms",
        "prediction",
    ]
    assert str(t.schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    assert str(t.schema.field("n").type) == "int64" and str(t.schema.field("flag").type) == "bool"
    emails = [e for e in t.column("email").to_pylist() if e is not None]
    assert emails and all(len(e) == 64 and "@" not in e for e in emails)  # hashed, never in clear
    assert not any(isinstance(v, float) and math.isnan(v) for v in t.column("prediction").to_pylist())


def test_latest_monitoring_verdicts_are_gauges(srv: ServerProc, http: httpx.Client) -> None:
    from datetime import UTC, datetime

    import pyarrow as pa

    from loopline.monitoring.monitor import MONITORING_SCHEMA
    from loopline.tables import DeltaStore

    now = datetime.now(UTC)
    base = {
        "checked_at": now,
        "window_start": now,
        "window_end": now,
        "model_version": "1",
        "slice": None,
        "n_reference": 100,
        "n_current": 50,
    }
    rows = [
        {
            **base,
            "kind": "dataset_drift",
            "feature": "*",
            "statistic": "drift_share",
            "value": 0.7,
            "threshold": 0.5,
            "verdict": "breach",
        },
        {
            **base,
            "kind": "range",
            "feature": "prediction",
            "statistic": "out_of_range_share",
            "value": 0.0,
            "threshold": 0.01,
            "verdict": "ok",
        },
    ]
    DeltaStore(str(srv.root / ".loopline" / "prod" / "tables")).append(
        "monitoring", pa.Table.from_pylist(rows, schema=MONITORING_SCHEMA)
    )
    time.sleep(0.4)  # past the server's refresh interval (serving.reload_interval)
    text = http.get("/metrics").text
    assert 'loopline_monitoring_verdict{kind="dataset_drift"} 1.0' in text
    assert 'loopline_monitoring_verdict{kind="range"} 0.0' in text
    assert "loopline_monitoring_checked_timestamp_seconds" in text
