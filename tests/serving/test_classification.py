"""Classifiers served end to end: a real `loopline serve` per classifier of ``_serving.CLASSIFIERS`` (text,
boolean and integer labels, binary and multiclass, a categorical input), each model trained by loopline.

Responses, the Open Inference V2 outputs and the prediction log carry typed labels and the model's
own probabilities (compared with the model loaded by MLflow); feedback labels are parsed to the
model's label type and stored typed."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
from _serving import (
    CLASSIFIERS,
    Classifier,
    ServerProc,
    classifier_rows,
    read_log,
    schemathesis_failures,
    start_server,
)

CASES = {c.name: c for c in CLASSIFIERS}
ARROW = {"int": pa.int64(), "bool": pa.bool_(), "str": pa.string()}
PYTYPE = {"int": int, "bool": bool, "str": str}
PATHS = {"str_binary": "matrix path, Treelite", "bool": "matrix path)", "int_multi": "matrix path, Treelite"}
PATHS["str_multi_cat"] = "matrix path"  # the categorical pipeline too (loopline.encoded), Treelite if it agrees


@dataclass
class Served:
    case: Classifier
    srv: ServerProc
    http: httpx.Client
    pyfunc: Any  # the model as MLflow loads it
    sklearn: Any


@pytest.fixture(scope="module", params=sorted(CASES))
def served(
    request: pytest.FixtureRequest, classifier_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    import mlflow

    case = CASES[request.param]
    root = tmp_path_factory.mktemp(case.name) / "proj"
    shutil.copytree(classifier_template / case.name, root)
    uri = f"sqlite:///{root / '.loopline' / 'prod' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model("models:/prod.demo/1")
    from loopline.runtime import unwrap

    sk = unwrap(pyfunc.get_raw_model())
    srv = start_server(root)
    with srv.client() as http:
        yield Served(case, srv, http, pyfunc, sk)
    assert srv.stop() == 0, srv.output()


def _rows(case: Classifier, n: int = 25, seed: int = 11):  # type: ignore[no-untyped-def]
    df, _ = classifier_rows(case, n, seed)
    return df


def _expected(s: Served, df) -> tuple[list[Any], np.ndarray, np.ndarray, list[Any]]:  # type: ignore[no-untyped-def]
    """The model's own labels (pyfunc predict), class probabilities, the probability kept per row, classes."""
    kind = s.case.kind
    labels = [PYTYPE[kind](v) for v in np.asarray(s.pyfunc.predict(df)).tolist()]
    proba = np.asarray(s.sklearn.predict_proba(df), dtype=np.float64)
    classes = [PYTYPE[kind](c) for c in s.sklearn.classes_.tolist()]
    if s.case.binary:
        probability = proba[:, classes.index(s.case.positive)]
    else:
        probability = proba[np.arange(len(df)), [classes.index(v) for v in labels]]
    return labels, proba, probability, classes


def _typed(values: list[Any], kind: str) -> bool:
    return all(type(v) is PYTYPE[kind] for v in values)


def test_ready_on_the_runtime_path(served: Served) -> None:
    """The server loads the classifier (a text-label classifier used to fail its smoke test) on the path the
    runtime chose: Treelite for the boosters, the estimator's matrix path when calibrated, and the matrix path for
    the pipeline with a categorical encoder (its text column encoded to codes, its model predicting them)."""
    r = served.http.get("/ready")
    assert r.status_code == 200 and r.json()["version"] == "1", r.text
    assert f"serving prod.demo version 1 (was None; {PATHS[served.case.name]}" in served.srv.output()


def test_invocations_typed_labels_and_probabilities(served: Served) -> None:
    case = served.case
    df = _rows(case)
    labels, proba, probability, classes = _expected(served, df)
    assert len(set(labels)) > 1  # the rows reach more than one class
    r = served.http.post("/invocations", json={"dataframe_split": df.to_dict(orient="split", index=False)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["predictions", "probability", "classes", "probabilities", "request_ids", "model_version"]
    assert body["predictions"] == labels and _typed(body["predictions"], case.kind)
    assert body["classes"] == classes == list(case.classes) and _typed(body["classes"], case.kind)
    assert np.allclose(body["probabilities"], proba, rtol=1e-9, atol=1e-12)
    assert np.allclose(body["probability"], probability, rtol=1e-9, atol=1e-12)
    # one record (the inline path of a one-row request) and CSV give the same
    one = served.http.post("/invocations", json={"dataframe_records": df.head(1).to_dict(orient="records")}).json()
    assert one["predictions"] == labels[:1] and np.allclose(one["probabilities"], proba[:1], rtol=1e-9)
    csv = served.http.post("/invocations", content=df.head(3).to_csv(index=False), headers={"Content-Type": "text/csv"})
    assert csv.status_code == 200, csv.text
    assert csv.json()["predictions"] == labels[:3]


def _v2_inputs(df) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    types = {"x": "FP64", "n": "INT64", "flag": "BOOL", "city": "BYTES"}
    return [
        {"name": c, "shape": [len(df)], "datatype": types[c], "data": df[c].tolist()} for c in df.columns if c in types
    ]


def test_v2_outputs_and_metadata_agree(served: Served) -> None:
    case = served.case
    df = _rows(case, n=7, seed=3)
    labels, proba, probability, classes = _expected(served, df)
    meta = served.http.get("/v2/models/prod.demo").json()
    assert meta["outputs"] == [
        {"name": "predict", "datatype": case.v2_datatype, "shape": [-1]},
        {"name": "probability", "datatype": "FP64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(case.classes)]},
    ]
    r = served.http.post("/v2/models/prod.demo/infer", json={"id": "q", "inputs": _v2_inputs(df)})
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert [o["name"] for o in r.json()["outputs"]] == ["predict", "probability", "probabilities"]
    for m in meta["outputs"]:  # the metadata announces what the responses send
        assert outs[m["name"]]["datatype"] == m["datatype"]
        assert [len(df) if d == -1 else d for d in m["shape"]] == outs[m["name"]]["shape"]
    assert outs["predict"]["data"] == labels and _typed(outs["predict"]["data"], case.kind)
    assert np.allclose(outs["probability"]["data"], probability, rtol=1e-9)
    assert np.allclose(np.reshape(outs["probabilities"]["data"], (len(df), -1)), proba, rtol=1e-9)
    assert json.loads(outs["probabilities"]["parameters"]["classes"]) == classes
    # select outputs; an unknown one is a 400 naming the model's outputs
    r = served.http.post(
        "/v2/models/prod.demo/infer", json={"inputs": _v2_inputs(df), "outputs": [{"name": "probabilities"}]}
    )
    assert [o["name"] for o in r.json()["outputs"]] == ["probabilities"]
    r = served.http.post("/v2/models/prod.demo/infer", json={"inputs": _v2_inputs(df), "outputs": [{"name": "proba"}]})
    assert r.status_code == 400
    assert (
        r.json()["error"]
        == "unknown output 'proba'; this model's outputs are 'predict', 'probability', 'probabilities'"
    )


def test_tritonclient_binary_outputs(served: Served) -> None:
    """A real V2 client asks for each output as binary tensor data (and JSON): same values either way."""
    tc = pytest.importorskip("tritonclient.http")
    case = served.case
    df = _rows(case, n=5, seed=4)
    labels, proba, probability, _ = _expected(served, df)
    client = tc.InferenceServerClient(url=served.srv.url.removeprefix("http://"))
    meta = client.get_model_metadata("prod.demo")
    assert [o["datatype"] for o in meta["outputs"]] == [case.v2_datatype, "FP64", "FP64"]
    for binary in (True, False):
        inputs = []
        for c in df.columns:
            arr = df[c].to_numpy()
            dt = {"x": "FP64", "n": "INT64", "flag": "BOOL", "city": "BYTES"}[c]
            t = tc.InferInput(c, [len(df)], dt)
            t.set_data_from_numpy(arr.astype(object) if dt == "BYTES" else arr, binary_data=binary)
            inputs.append(t)
        wanted = [tc.InferRequestedOutput(n, binary_data=binary) for n in ("predict", "probability", "probabilities")]
        res = client.infer("prod.demo", inputs, outputs=wanted)
        got = res.as_numpy("predict").tolist()
        if case.kind == "str":
            got = [v.decode() if isinstance(v, bytes) else v for v in got]
        assert got == labels
        assert np.allclose(res.as_numpy("probability"), probability, rtol=1e-9)
        assert res.as_numpy("probabilities").shape == proba.shape
        assert np.allclose(res.as_numpy("probabilities"), proba, rtol=1e-9)


def _wait_logged(root: Path, ids: list[str], timeout: float = 20.0) -> pa.Table:
    deadline = time.monotonic() + timeout
    while True:
        try:
            table = read_log(root)
        except Exception:  # not created yet
            table = None
        if table is not None and set(ids) <= set(table.column("request_id").to_pylist()):
            return table
        assert time.monotonic() < deadline, "rows not in inference_log in time"
        time.sleep(0.2)


def test_prediction_log_is_typed(served: Served) -> None:
    case = served.case
    df = _rows(case, n=6, seed=5)
    body = served.http.post("/invocations", json={"dataframe_split": df.to_dict(orient="split", index=False)}).json()
    one = served.http.post("/invocations", json={"dataframe_records": df.tail(1).to_dict(orient="records")}).json()
    ids = body["request_ids"] + one["request_ids"]
    table = _wait_logged(served.srv.root, ids)
    schema = table.schema
    assert schema.field("prediction").type == ARROW[case.kind]
    assert schema.field("probability").type == pa.float64()
    assert schema.field("probabilities").type == pa.map_(ARROW[case.kind], pa.float64())
    assert table.column_names[:10] == [
        "request_id",
        "timestamp",
        "model_name",
        "model_version",
        "endpoint",
        "status",
        "latency_ms",
        "prediction",
        "probability",
        "probabilities",
    ]
    rows = {r["request_id"]: r for r in table.to_pylist()}
    sent = list(zip(body["predictions"], body["probability"], body["probabilities"], strict=True))
    sent.append((one["predictions"][0], one["probability"][0], one["probabilities"][0]))
    for rid, (label, p, probs) in zip(ids, sent, strict=True):
        row = rows[rid]
        assert row["prediction"] == label and type(row["prediction"]) is PYTYPE[case.kind]
        assert row["probability"] == pytest.approx(p, rel=1e-12)
        assert dict(row["probabilities"]) == pytest.approx(dict(zip(body["classes"], probs, strict=True)), rel=1e-12)


ACCEPTED: dict[str, list[tuple[Any, Any]]] = {
    "int": [(1, 1), (1.0, 1), ("1", 1), (" 2 ", 2), (5, 5), ("5.0", 5)],
    "bool": [(True, True), ("true", True), ("True", True), (1, True), (0, False), (False, False), ("false", False)],
    "str": [],  # per classifier: its classes
}
REFUSED: dict[str, list[tuple[Any, str]]] = {
    "int": [
        (3, r"body\.label: 3 is not one of the model's classes \[1, 2, 5\] \(label type int\)"),
        ("abc", r"body\.label: 'abc' is not a number; expected one of the model's classes \[1, 2, 5\]"),
        (True, r"body\.label: True is a boolean, expected an integer label; expected one of the model's classes"),
        (1.5, r"body\.label: 1\.5 is not an integer label; expected one of the model's classes \[1, 2, 5\]"),
    ],
    "bool": [
        ("maybe", r"body\.label: 'maybe' is not a boolean label \(true/false\); expected one of the model's classes"),
        (
            2,
            r"body\.label: 2 is not a boolean label \(true/false\); "
            r"expected one of the model's classes \[False, True\] \(label type bool\)",
        ),
    ],
    "str": [
        ("maybe", r"body\.label: 'maybe' is not one of the model's classes \[.*\] \(label type str\)"),
        (1, r"body\.label: 1 is not one of the model's classes"),
        (True, r"body\.label: True is not one of the model's classes"),
    ],
}


def _feedback(root: Path) -> pa.Table | None:
    from deltalake import DeltaTable

    path = root / ".loopline" / "prod" / "tables" / "feedback"
    return DeltaTable(str(path)).to_pyarrow_table() if (path / "_delta_log").is_dir() else None


def test_feedback_labels_are_parsed_to_the_model_type(served: Served) -> None:
    case = served.case
    accepted = ACCEPTED[case.kind] or [(c, c) for c in case.classes]
    rid = served.http.post("/invocations", json={"dataframe_records": _rows(case, 1).to_dict(orient="records")})
    rid = rid.json()["request_ids"][0]
    before = _feedback(served.srv.root)
    n0 = 0 if before is None else before.num_rows
    items = [{"request_id": rid, "label": sent} for sent, _ in accepted]
    r = served.http.post("/feedback", json=items)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(items) and r.json()["unknown_request_ids"] == []
    table = _feedback(served.srv.root)
    assert table is not None and table.schema.field("label").type == ARROW[case.kind]
    stored = table.column("label").to_pylist()[n0:]
    assert stored == [want for _, want in accepted]
    assert all(type(v) is PYTYPE[case.kind] for v in stored)
    for sent, message in REFUSED[case.kind]:
        r = served.http.post("/feedback", json={"request_id": rid, "label": sent})
        assert r.status_code == 422, (sent, r.text)
        assert re.search(message, r.json()["error"]), r.json()["error"]
    # a batch with one bad item stores nothing
    bad = REFUSED[case.kind][0][0]
    r = served.http.post(
        "/feedback", json=[{"request_id": rid, "label": accepted[0][0]}, {"keys": {"id": 1}, "label": bad}]
    )
    assert r.status_code == 422 and r.json()["error"].startswith("[1].label: "), r.text
    table = _feedback(served.srv.root)
    assert table is not None and table.num_rows == n0 + len(items)


def test_metrics_count_classes_and_probabilities(served: Served) -> None:
    case = served.case
    df = _rows(case, n=40, seed=6)
    labels, _, probability, _ = _expected(served, df)
    served.http.post("/invocations", json={"dataframe_split": df.to_dict(orient="split", index=False)})
    text = served.http.get("/metrics").text
    for label in set(labels):
        shown = str(label).lower() if case.kind == "bool" else str(label)
        assert re.search(rf'^loopline_predictions_by_class_total{{label="{re.escape(shown)}"}} [1-9]', text, re.M), (
            shown
        )
    assert re.search(r'^loopline_prediction_probability_bucket{le="0\.5"} ', text, re.M), text
    assert "loopline_prediction_value" not in text  # the regression histogram
    out = int(np.count_nonzero((probability < 0.02) | (probability > 0.98)))  # gate.prediction_range
    line = next(ln for ln in text.splitlines() if ln.startswith("loopline_range_violations_total"))
    assert float(line.split()[1]) >= out


@pytest.mark.parametrize("served", ["str_multi_cat"], indirect=True)  # one classifier: the others share the code
def test_schemathesis_no_5xx(served: Served) -> None:
    """Generated requests (feedback labels of any JSON type, V2 output names...) never get a 5xx from a classifier."""
    failures = schemathesis_failures(served.srv.url, max_examples=20)
    assert not failures, "\n".join(failures[:10])


def test_feedback_before_a_model_is_loaded(classifier_template: Path, tmp_path: Path) -> None:
    """Not ready yet: the label type comes from the features table's target column; without it, a 503."""
    from mlflow import MlflowClient

    root = tmp_path / "proj"
    shutil.copytree(classifier_template / "int_multi", root)
    uri = f"sqlite:///{root / '.loopline' / 'prod' / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).delete_registered_model_alias("prod.demo", "champion")
    srv = start_server(root, wait_ready=False)
    try:
        with srv.client() as http:
            assert http.get("/ready").status_code == 503
            r = http.post("/feedback", json=[{"keys": {"id": 3}, "label": "7"}, {"keys": {"id": 4}, "label": 2.0}])
            assert r.status_code == 200, r.text  # any int: no classes known without a model
            table = _feedback(root)
            assert table is not None and table.column("label").to_pylist() == [7, 2]
            assert table.schema.field("label").type == pa.int64()
            r = http.post("/feedback", json={"keys": {"id": 3}, "label": "x"})
            assert r.status_code == 422
            assert (
                r.json()["error"] == "body.label: 'x' is not a number; expected a label of that type (label type int)"
            )
            shutil.rmtree(root / ".loopline" / "prod" / "tables" / "features")
            r = http.post("/feedback", json={"keys": {"id": 3}, "label": 2})
            assert r.status_code == 503
            assert "no model is loaded yet and the features table has no target column 'y'" in r.json()["error"]
            r = http.post("/feedback", json={"keys": {"id": 3}})  # a malformed body is still the client's 422
            assert r.status_code == 422 and "label: Field required" in r.json()["error"]
    finally:
        assert srv.stop() == 0
