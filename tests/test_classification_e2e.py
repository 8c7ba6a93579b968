"""CLI end to end, one project per label type: int 0/1, bool, text binary, text multiclass.

Each project is made by ``loopline init`` in a temporary folder and given a ``loopline.yaml`` over a public
dataset the ISLP package ships (DuckDB reads the CSV in place; no download): Default (``default`` as 0/1),
College (``Private`` as a bool), OJ (``Purchase``: CH / MM), Carseats (``ShelveLoc``: Bad / Good / Medium).
A fifth of the rows is "live": ingested with the label not arrived yet (null). Then, as a user would:
ingest -> train (refit off: the deployed model is the one the gate scored) -> promote -> batch (the
training rows and the live rows) -> serve (real uvicorn) -> ``/invocations`` and V2 ``/infer`` on live rows
-> ``/feedback`` for the gate's test rows in every accepted spelling of the label -> monitor -> feedback for
the live rows -> loop with ``retraining.use_feedback_labels: true``.

Asserted: probabilities in the predictions table, both HTTP protocols (equal to the batch's for the same
rows) and ``inference_log``; the gate's F1 (MLflow) equals monitoring's F1 on the same rows; an unknown class
is a 422 naming the value and the classes, and stores nothing; the loop writes the live rows' labels into the
features table in their own type and trains a candidate on them.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from _support import run_cli
from serving._serving import ServerProc, start_server


@dataclass(frozen=True)
class Case:
    name: str
    csv: str  # ISLP data file
    inputs: str  # SQL select list of the model inputs
    label: str  # SQL expression of the label
    kind: str  # label type: int, bool, str
    classes: tuple[Any, ...]
    spellings: dict[Any, tuple[Any, ...]]  # class -> every accepted JSON spelling
    unknown: tuple[Any, str]  # a label that is not a class, and the 422 message (regex)
    positive: Any = None
    where: str = "TRUE"

    @property
    def f1(self) -> str:
        return "f1" if len(self.classes) == 2 else "f1_macro"


CASES = [
    Case(
        "int01", "Default", "student, balance, income", """CASE WHEN "default" = 'Yes' THEN 1 ELSE 0 END""",
        "int", (0, 1), {0: (0, 0.0, "0"), 1: (1, 1.0, "1")},
        (2, r"body\.label: 2 is not one of the model's classes \[0, 1\] \(label type int\)"),
        positive=1, where="id % 4 = 0",
    ),
    Case(
        "bool", "College",
        'Apps, Accept, Top10perc, Outstate, "Room.Board" AS room_board, PhD, "S.F.Ratio" AS sf_ratio, Expend',
        "Private = 'Yes'", "bool", (False, True),
        {False: (False, "false", "False", 0), True: (True, "true", "True", 1)},
        ("maybe", r"body\.label: 'maybe' is not a boolean label \(true/false\)"), positive=True,
    ),
    Case(
        "str_binary", "OJ", "LoyalCH, PriceDiff, DiscMM, Store7, WeekofPurchase", "Purchase", "str", ("CH", "MM"),
        {"CH": ("CH",), "MM": ("MM",)},
        ("XX", r"body\.label: 'XX' is not one of the model's classes \['CH', 'MM'\] \(label type str\)"),
        positive="MM",
    ),
    Case(
        "str_multiclass", "Carseats", "Sales, CompPrice, Income, Advertising, Price, Age, Urban", "ShelveLoc", "str",
        ("Bad", "Good", "Medium"), {"Bad": ("Bad",), "Good": ("Good",), "Medium": ("Medium",)},
        (
            "Excellent",
            r"body\.label: 'Excellent' is not one of the model's classes \['Bad', 'Good', 'Medium'\] "
            r"\(label type str\)",
        ),
    ),
]  # fmt: skip
ARROW = {"int": pa.int64(), "bool": pa.bool_(), "str": pa.string()}
V2_TYPES = {"double": "FP64", "int64": "INT64", "int32": "INT32", "bool": "BOOL", "string": "BYTES"}


def query(case: Case, live_labels: bool = False) -> str:
    """The source query: ``$part`` train or live; live rows have no label yet (unless ``live_labels``)."""
    label = case.label if live_labels else f"CASE WHEN $part = 'live' THEN NULL ELSE {case.label} END"
    return (
        f"WITH t AS (SELECT row_number() OVER () AS id, * FROM data WHERE TRUE) "
        f"SELECT id, {case.inputs}, {label} AS y, $part AS _batch_id FROM t "
        f"WHERE {case.where} AND (id % 5 = 0) = ($part = 'live') ORDER BY id"
    )


def config(case: Case) -> str:
    model: dict[str, Any] = {"name": "cls", "task": "classification", "target": "y", "keys": ["id"]}
    if case.positive is not None:
        model["positive_label"] = case.positive
    cfg = {
        "project": f"cls_{case.name}",
        "model": model,
        "sources": {
            "data": {"kind": "sql", "files": {"data": f"pkg://ISLP/data/{case.csv}.csv"}, "query": query(case)}
        },
        "contract": {
            "strict": False,
            "columns": {"id": {"type": "int", "nullable": False, "unique": True}, "y": {"type": case.kind}},
        },
        "training": {
            "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
            "params": {"max_iter": 30, "random_state": 0},
            "split": {"method": "random", "seed": 0, "valid": 0.2, "test": 0.2},
            "refit": False,  # the deployed model is the one the gate scored on its test rows
            "metrics": [case.f1, "roc_auc", "accuracy"],
        },
        "gate": {"prediction_range": [0.0, 1.0]},
        "batch": {"input": "features"},
        "serving": {"reload_interval": "0.5s", "log": {"flush_rows": 100, "flush_interval": "0.3s"}},
        "monitoring": {"source": "batch", "time": "wall", "performance": {"metric": case.f1}},
        "retraining": {"triggers": ["always"], "use_feedback_labels": True},
        "environments": {"prod": {}},
    }
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)


def truth(case: Case) -> dict[int, Any]:
    """id -> the true label of every live row (what arrives later as feedback)."""
    import duckdb

    con = duckdb.connect()
    path = str(files("ISLP").joinpath(f"data/{case.csv}.csv"))
    con.execute(f"CREATE VIEW data AS SELECT * FROM read_csv_auto('{path}')")
    rows = con.execute(query(case, live_labels=True).replace("$part", "'live'")).fetchall()
    return {int(r[0]): r[-2] for r in rows}


@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated, empty MLflow database, copied into each project (the migrations cost seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}").search_registered_models()
    return path


def cli(root: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str:
    r = run_cli(*args, "--project", str(root), timeout=600)  # the only environment: prod
    assert r.returncode in ok, f"loopline {' '.join(args)} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def table(root: Path, name: str) -> pa.Table:
    from deltalake import DeltaTable

    return DeltaTable(str(root / ".loopline" / "prod" / "tables" / name)).to_pyarrow_table()


def spelled(case: Case, labels: list[Any]) -> list[Any]:
    """Each label in one of its accepted spellings, cycling through all of them."""
    return [case.spellings[v][i % len(case.spellings[v])] for i, v in enumerate(labels)]


def post_feedback(srv: ServerProc, case: Case, ids: list[int], labels: list[Any]) -> None:
    items = [{"keys": {"id": i}, "label": s} for i, s in zip(ids, spelled(case, labels), strict=True)]
    with srv.client() as http:
        r = http.post("/feedback", json=items)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(items)


def probabilities_ok(maps: list[Any], classes: tuple[Any, ...]) -> None:
    for m in maps:
        d = dict(m)
        assert set(d) == set(classes), d
        assert all(0.0 <= p <= 1.0 for p in d.values()) and sum(d.values()) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_classifier_through_the_whole_cli(tmp_path: Path, case: Case, empty_registry: Path) -> None:
    import shutil

    from loopline.config import load_project
    from loopline.training_data import test_rows

    root = tmp_path / case.name
    r = run_cli("init", str(root))
    assert r.returncode == 0, r.stderr
    (root / "loopline.yaml").write_text(config(case))
    cli(root, "check")
    (root / ".loopline" / "prod").mkdir(parents=True)
    shutil.copy(empty_registry, root / ".loopline" / "prod" / "mlflow.db")

    # ingest -> train -> promote -> batch (the training rows, then the live rows whose labels have not arrived)
    cli(root, "ingest", "data", "--param", "part=train")
    cli(root, "run", "train")
    test, _ = test_rows(load_project(root, "prod"))  # the gate's test rows (seeded random split)
    cli(root, "promote")
    cli(root, "run", "batch", "--input-batch", "train")
    cli(root, "ingest", "data", "--param", "part=live")
    cli(root, "run", "batch", "--input-batch", "live")
    live = truth(case)
    assert set(table(root, "features").filter(pc.field("_batch_id") == "live")["id"].to_pylist()) == set(live)

    preds = table(root, "predictions")
    assert preds.schema.field("prediction").type == ARROW[case.kind]
    assert preds.num_rows == table(root, "features").num_rows
    assert set(preds["prediction"].to_pylist()) <= set(case.classes)
    probability = preds["probability"].to_numpy()
    assert ((probability >= 0) & (probability <= 1)).all() and preds["probabilities"].null_count == 0
    probabilities_ok(preds["probabilities"].to_pylist(), case.classes)
    shown = cli(root, "sql", "select count(*) as n from predictions where probability is not null", "-f", "json")
    assert json.loads(shown)["n"] == preds.num_rows
    columns = (preds[c].to_pylist() for c in ("id", "prediction", "probabilities"))
    by_id = {i: (p, dict(m)) for i, p, m in zip(*columns, strict=True)}

    srv = start_server(root)
    try:
        http_checks(srv, case, root, sorted(live)[:12], by_id)
        # labels of the gate's test rows, in every accepted spelling; monitoring then scores exactly those rows
        ids = [int(i) for i in test["id"]]
        post_feedback(srv, case, ids, [v.item() if hasattr(v, "item") else v for v in test["y"]])
        fb = table(root, "feedback")
        assert fb.schema.field("label").type == ARROW[case.kind]
        assert fb["label"].to_pylist() == [v.item() if hasattr(v, "item") else v for v in test["y"]]
        unknown_class_is_refused(srv, case, root, fb.num_rows)

        cli(root, "monitor", "--window", "1d", ok=(0, 10))
        same_f1_in_gate_and_monitoring(case, root, len(ids))

        post_feedback(srv, case, sorted(live), [live[i] for i in sorted(live)])
    finally:
        srv.stop(signal.SIGTERM)  # flushes the prediction log
    inference_log_has_probabilities(case, root)

    # the loop folds the feedback labels into the features' target (in its own type) and retrains
    out = cli(root, "loop", "--window", "1d", ok=(0, 4))
    feats = table(root, "features").filter(pc.field("_batch_id") == "live")
    assert feats.schema.field("y").type == table(root, "raw").schema.field("y").type
    assert dict(zip(feats["id"].to_pylist(), feats["y"].to_pylist(), strict=True)) == live
    shown = cli(root, "sql", "select step, outcome, reasons from decisions", "-f", "json")
    steps = [json.loads(line) for line in shown.splitlines()]  # one JSON object per row
    labels_step = next(s for s in steps if s["step"] == "labels")
    assert f"{len(live) + len(ids)} feature rows labelled from feedback" in labels_step["reasons"], labels_step
    assert any(s["step"] == "train" and s["outcome"] == "ok" for s in steps), (out, steps)


def http_checks(srv: ServerProc, case: Case, root: Path, ids: list[int], by_id: dict[int, Any]) -> None:
    """/invocations and V2 /infer on live rows: typed labels and probabilities, equal to the batch's."""
    feats = table(root, "features").filter(pc.field("_batch_id") == "live")
    rows = feats.filter(pc.is_in(feats["id"], pa.array(ids, feats.schema.field("id").type)))
    inputs = [c for c in rows.column_names if c not in ("y", "_batch_id")]
    frame = rows.select(inputs).to_pandas()
    want_labels = [by_id[i][0] for i in frame["id"]]
    want = np.array([[by_id[i][1][c] for c in case.classes] for i in frame["id"]])
    with srv.client() as http:
        r = http.post("/invocations", json={"dataframe_split": frame.to_dict(orient="split", index=False)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["classes"] == list(case.classes)
        assert body["predictions"] == want_labels
        assert all(type(v) is type(case.classes[0]) for v in body["predictions"])
        assert np.allclose(body["probabilities"], want, rtol=1e-9, atol=1e-12)
        pos = case.classes.index(case.positive) if case.positive is not None else None
        expected_probability = want[:, pos] if pos is not None else want.max(axis=1)
        assert np.allclose(body["probability"], expected_probability, rtol=1e-9, atol=1e-12)

        v2 = [
            {"name": c, "shape": [len(frame)], "datatype": V2_TYPES[str(rows.schema.field(c).type)],
             "data": rows[c].to_pylist()}
            for c in inputs
        ]  # fmt: skip
        r = http.post("/v2/models/prod.cls/infer", json={"inputs": v2})
        assert r.status_code == 200, r.text
        outs = {o["name"]: o for o in r.json()["outputs"]}
        assert outs["predict"]["data"] == want_labels
        assert np.allclose(outs["probability"]["data"], expected_probability, rtol=1e-9, atol=1e-12)
        assert np.allclose(np.reshape(outs["probabilities"]["data"], want.shape), want, rtol=1e-9, atol=1e-12)
        assert json.loads(outs["probabilities"]["parameters"]["classes"]) == list(case.classes)


def unknown_class_is_refused(srv: ServerProc, case: Case, root: Path, stored: int) -> None:
    value, message = case.unknown
    with srv.client() as http:
        r = http.post("/feedback", json={"keys": {"id": 1}, "label": value})
    assert r.status_code == 422, r.text
    assert re.search(message, r.json()["error"]), r.json()["error"]
    assert table(root, "feedback").num_rows == stored  # nothing of the request was stored


def same_f1_in_gate_and_monitoring(case: Case, root: Path, n_test: int) -> None:
    """The F1 the gate recorded in MLflow for the champion = monitoring's F1 on the same (test) rows."""
    from mlflow import MlflowClient

    status = json.loads(cli(root, "status", "--json", ok=(0, 12)))
    gate_f1 = status["champion"]["gate_metrics"][case.f1]
    uri = status["tracking_uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("prod.cls", status["champion"]["version"])
    assert float(mv.tags[f"loopline.gate.candidate.{case.f1}"]) == gate_f1
    assert client.get_run(mv.run_id).data.metrics[f"gate_candidate_{case.f1}"] == pytest.approx(gate_f1, rel=1e-12)

    mon = table(root, "monitoring").to_pylist()
    perf = [
        m for m in mon if m["kind"] == "performance" and m["feature"] == case.f1 and m["slice"] is None
    ]  # fmt: skip
    assert len(perf) == 1, perf
    assert perf[0]["n_current"] == n_test
    assert perf[0]["value"] == pytest.approx(gate_f1, rel=1e-12, abs=1e-12)
    assert perf[0]["verdict"] == "ok"
    assert 0.0 < gate_f1 <= 1.0


def inference_log_has_probabilities(case: Case, root: Path) -> None:
    log = table(root, "inference_log")
    assert log.num_rows >= 24  # 12 rows through /invocations, 12 through V2
    assert log.schema.field("prediction").type == ARROW[case.kind]
    assert log["probability"].null_count == 0 and log["probabilities"].null_count == 0
    probabilities_ok(log["probabilities"].to_pylist(), case.classes)
    assert set(log["endpoint"].to_pylist()) == {"invocations", "v2_infer"}
