"""`loopline review`: flagged predictions, expert labels as feedback, clearing the review flag."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from _support import run_cli
from loopline.config import Project, load_project
from loopline.errors import ReviewError
from loopline.review import clear, flagged, label
from loopline.tables import DeltaStore
from test_status import build_registry_template, with_registry

TS = pa.timestamp("us", tz="UTC")
T0 = datetime(2026, 3, 1, tzinfo=UTC)
GATE = "gate:\n  prediction_range: [0, 200]\n"


def _project(project_dir: Path, extra: str = GATE) -> Project:
    (project_dir / "loopline.yaml").write_text((project_dir / "loopline.yaml").read_text() + extra)
    return load_project(project_dir, "dev")


def predictions(ids: list[int], preds: list[float], out: list[bool], at: datetime = T0) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "prediction": pa.array(preds, pa.float64()),
            "model_name": ["dev.demo"] * n,
            "model_version": ["1"] * n,
            "run_id": ["run1"] * n,
            "scored_at": pa.array([at] * n, TS),
            "_batch_id": ["b1"] * n,
            "out_of_range": pa.array(out, pa.bool_()),
        }
    )


def inference_log(rows: list[tuple[str, float | None, int]], at: datetime = T0, **extra: list[Any]) -> pa.Table:
    n = len(rows)
    cols: dict[str, Any] = {
        "request_id": [r[0] for r in rows],
        "timestamp": pa.array([at + timedelta(minutes=i) for i in range(n)], TS),
        "model_name": ["dev.demo"] * n,
        "model_version": ["1"] * n,
        "endpoint": ["/invocations"] * n,
        "status": pa.array([200] * n, pa.int64()),
        "latency_ms": pa.array([1.5] * n, pa.float64()),
        "prediction": pa.array([r[1] for r in rows], pa.float64()),
        "x": pa.array([1.0] * n, pa.float64()),
        "id": pa.array([r[2] for r in rows], pa.int64()),
    }
    cols.update(extra)
    return pa.table(cols)


def feedback(request_ids: list[str | None], ids: list[int | None]) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "request_id": pa.array(request_ids, pa.string()),
            "id": pa.array(ids, pa.int64()),
            "label": pa.array([1.0] * n, pa.float64()),
            "received_at": pa.array([T0] * n, TS),
            "_source": ["api"] * n,
        }
    )


@pytest.fixture
def registry_template() -> dict[str, Any]:
    return build_registry_template()  # built once per process, shared with test_status.py


@pytest.fixture
def seeded(project_dir: Path) -> Project:
    """predictions: ids 2 and 4 out of range (4 already labelled); inference_log: r2 above, r3 NaN, r4 below
    the range (r4 already labelled), r1 fine."""
    p = _project(project_dir)
    store = DeltaStore(p.storage_root)
    store.append("predictions", predictions([1, 2, 3, 4], [10.0, 250.0, 20.0, -5.0], [False, True, False, True]))
    store.append(
        "inference_log",
        inference_log([("r1", 50.0, 11), ("r2", 500.0, 12), ("r3", float("nan"), 13), ("r4", -3.0, 14)]),
    )
    store.append("feedback", feedback([None, "r4"], [4, None]))
    return p


def test_review_list_finds_flagged_rows_and_skips_labelled_ones(seeded: Project) -> None:
    result = flagged(seeded)
    got = {(f.source, f.request_id, f.keys.get("id")): f.reason for f in result.items}
    assert got == {
        ("predictions", None, 2): "out of range [0, 200]",
        ("inference_log", "r2", 12): "out of range [0, 200]",
        ("inference_log", "r3", 13): "prediction is NaN",
    }
    assert result.total == 3 and result.already_labelled == 2
    assert [f.ref for f in result.items if f.source == "predictions"] == ["id=2"]
    assert flagged(seeded, limit=1).items[0].request_id == "r3"  # newest first
    json.dumps(result.to_dict())  # NaN predictions become null


def test_review_label_by_request_id_and_key_writes_feedback(seeded: Project) -> None:
    res = label(seeded, "42.5", request_id="r2", note="checked by hand")
    assert res.row["request_id"] == "r2" and res.row["label"] == 42.5 and res.row["_source"] == "review"
    assert res.row["id"] == 12  # the key of the logged request, so retraining can join it
    label(seeded, 7, keys=["id=2"])
    fb = DeltaStore(seeded.storage_root).read("feedback").to_pylist()
    review = sorted((r for r in fb if r["_source"] == "review"), key=lambda r: r["received_at"])
    assert [(r["request_id"], r["id"], r["label"], r["_note"]) for r in review] == [
        ("r2", 12, 42.5, "checked by hand"),
        (None, 2, 7.0, None),
    ]
    assert all(r["received_at"].tzinfo is not None for r in review)
    remaining = flagged(seeded)
    assert [f.request_id for f in remaining.items] == ["r3"] and remaining.already_labelled == 4


def test_review_label_refuses_unknown_ids_keys_and_bad_labels(seeded: Project) -> None:
    with pytest.raises(ReviewError, match="unknown request id 'nope': not in the inference_log table"):
        label(seeded, 1.0, request_id="nope")
    with pytest.raises(ReviewError, match=r"unknown key id=999: no prediction with it in predictions or inference_log"):
        label(seeded, 1.0, keys=["id=999"])
    with pytest.raises(ReviewError, match=r"--key id=abc: not a valid int64 \(the type of predictions.id\)"):
        label(seeded, 1.0, keys=["id=abc"])
    with pytest.raises(ReviewError, match="--key sku: 'sku' is not a key column"):
        label(seeded, 1.0, keys=["sku=1"])
    with pytest.raises(ReviewError, match="--label must be a number for a regression model, got 'high'"):
        label(seeded, "high", request_id="r2")
    with pytest.raises(ReviewError, match="--label must be a finite number, got 'nan'"):
        label(seeded, "nan", request_id="r2")
    with pytest.raises(ReviewError, match="give exactly one of --request-id ID or --key column=value"):
        label(seeded, 1.0)
    assert not [r for r in DeltaStore(seeded.storage_root).read("feedback").to_pylist() if r["_source"] == "review"]


def test_review_low_confidence_for_classifiers(project_dir: Path) -> None:
    p = _project(project_dir, "")
    yaml = (project_dir / "loopline.yaml").read_text().replace("  target: y", "  target: y\n  task: classification")
    (project_dir / "loopline.yaml").write_text(yaml)
    p = load_project(project_dir, "dev")
    store = DeltaStore(p.storage_root)
    log = inference_log([("a", None, 1), ("b", None, 2), ("c", None, 3)], confidence=pa.array([0.9, 0.55, 0.3]))
    log = log.set_column(log.column_names.index("prediction"), "prediction", pa.array(["yes", "no", "yes"]))
    store.append("inference_log", log)
    result = flagged(p, min_confidence=0.6)
    assert {f.request_id: f.reason for f in result.items} == {"b": "confidence 0.55 < 0.6", "c": "confidence 0.3 < 0.6"}
    assert [f.request_id for f in flagged(p, min_confidence=0.4).items] == ["c"]
    res = label(p, "yes", request_id="b")
    assert res.row["label"] == "yes"
    assert [f.request_id for f in flagged(p).items] == ["c"]


def test_review_clear_records_the_human_decision(
    project_dir: Path,
    registry_template: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loopline.registry import history
    from loopline.status import needs_review, set_needs_review

    p = with_registry(project_dir, registry_template)
    monkeypatch.setenv("LOOPLINE_ACTOR", "alice")
    assert clear(p).cleared is False  # nothing flagged: nothing written
    assert not DeltaStore(p.storage_root).exists("registry_events")
    set_needs_review(p, "3 candidates in a row failed the gate")
    res = clear(p, "data fixed upstream")
    assert res.cleared and res.actor == "alice" and res.previous_reason == "3 candidates in a row failed the gate"
    assert needs_review(p) is None
    events = history(p)  # the registry module reads the row back
    assert len(events) == 1 and events[0].action == "review_cleared" and events[0].actor == "alice"
    assert events[0].reason == "needs review cleared (was: 3 candidates in a row failed the gate): data fixed upstream"

    set_needs_review(p, "again")
    out = run_cli("review", "clear", "--project", str(project_dir), env={"LOOPLINE_ACTOR": "bob"})
    assert out.returncode == 0, out.stderr
    assert "review flag cleared by bob (was: again)" in out.stdout
    assert [e.actor for e in history(p)] == ["bob", "alice"]


def test_review_cli_list_label_and_errors(seeded: Project) -> None:
    root = str(seeded.root)
    out = run_cli("review", "list", "--project", root)
    assert out.returncode == 0, out.stderr
    assert "r2" in out.stdout and "r3" in out.stdout and "id=2" in out.stdout and "r4" not in out.stdout
    assert "prediction is NaN" in out.stdout and "out of range [0, 200]" in out.stdout

    out = run_cli("review", "label", "--project", root, "--request-id", "nope", "--label", "3")
    assert out.returncode == 1
    assert "unknown request id 'nope'" in out.stderr

    out = run_cli("review", "label", "--project", root, "--key", "id=2", "--label", "180", "--note", "ok")
    assert out.returncode == 0, out.stderr
    assert "labelled id=2 = 180.0" in out.stdout

    out = run_cli("review", "list", "--project", root, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [i["request_id"] for i in data["items"]] == ["r3", "r2"] and data["already_labelled"] == 3


# ----------------------------------------------------------------------------- classifiers: typed labels, probability
CLASSIFIER = "  task: classification\n"


def _classifier(project_dir: Path) -> Project:
    yaml = (project_dir / "loopline.yaml").read_text().replace("  target: y\n", "  target: y\n" + CLASSIFIER)
    (project_dir / "loopline.yaml").write_text(yaml)
    return load_project(project_dir, "dev")


def probability_log(probability: list[float], labels: list[Any], label_type: pa.DataType) -> pa.Table:
    """inference_log rows in the column contract: typed prediction, probability, probabilities (every class)."""
    n = len(probability)
    classes = sorted(set(labels), key=str)
    maps = [
        [(c, (p if c == labels[i] else (1 - p) / (len(classes) - 1))) for c in classes]
        for i, p in enumerate(probability)
    ]
    log = inference_log([(f"q{i}", None, i) for i in range(n)])
    log = log.set_column(log.column_names.index("prediction"), "prediction", pa.array(labels, label_type))
    return log.append_column("probability", pa.array(probability)).append_column(
        "probabilities", pa.array(maps, pa.map_(label_type, pa.float64()))
    )


def test_review_low_confidence_from_the_probability_column(tmp_path: Path, project_dir: Path) -> None:
    # binary: probability = P(positive), confidence = max(p, 1 - p)
    p = _classifier(project_dir)
    log = probability_log([0.5, 0.9, 0.1, 0.35], [1, 1, 0, 0], pa.int64())
    log = log.set_column(log.column_names.index("probability"), "probability", pa.array([0.5, 0.9, 0.1, 0.35]))
    DeltaStore(p.storage_root).append("inference_log", log)
    got = {f.request_id: (f.reason, f.confidence) for f in flagged(p, min_confidence=0.6).items}
    assert got == {"q0": ("confidence 0.5 < 0.6 (probability 0.5)", 0.5)}
    assert {f.request_id for f in flagged(p, min_confidence=0.7).items} == {"q0", "q3"}  # 0.65 < 0.7

    # multiclass: probability = P(predicted label) is the confidence
    other = tmp_path / "multi"
    other.mkdir()
    (other / "loopline.yaml").write_text((project_dir / "loopline.yaml").read_text())
    pm = load_project(other, "dev")
    DeltaStore(pm.storage_root).append("inference_log", probability_log([0.5, 0.9, 0.34], ["a", "b", "c"], pa.string()))
    result = flagged(pm, min_confidence=0.6)
    assert {f.request_id: f.reason for f in result.items} == {
        "q0": "confidence 0.5 < 0.6 (probability 0.5)",
        "q2": "confidence 0.34 < 0.6 (probability 0.34)",
    }
    assert json.loads(json.dumps(result.to_dict()))["items"][0]["confidence"] == 0.34  # newest first


@pytest.mark.parametrize(
    ("spec", "typed", "given", "want", "unknown"),
    [
        (
            {"label_type": "int", "classes": [0, 1], "positive_label": 1},
            pa.int64(),
            "1",
            1,
            r"--label 'maybe' is not a number; the model's classes are \[0, 1\] \(label type int\)",
        ),
        (
            {"label_type": "bool", "classes": [False, True], "positive_label": True},
            pa.bool_(),
            "TRUE",
            True,
            r"--label 'maybe' is not a boolean label \(true/false\); the model's classes are \[False, True\]",
        ),
        (
            {"label_type": "str", "classes": ["no", "yes"], "positive_label": "yes"},
            pa.string(),
            " yes",
            "yes",
            r"--label 'maybe' is not one of the model's classes \['no', 'yes'\] \(label type str\)",
        ),
    ],
    ids=["int", "bool", "str"],
)
def test_review_label_is_parsed_with_the_champions_label_contract(
    project_dir: Path,
    registry_template: dict[str, Any],
    spec: dict[str, Any],
    typed: pa.DataType,
    given: str,
    want: Any,
    unknown: str,
) -> None:
    from loopline import tracking

    _classifier(project_dir)
    p = with_registry(project_dir, registry_template)
    c = tracking.client(p)
    c.set_registered_model_alias("dev.demo", "champion", "1")
    c.set_tag(registry_template["run_ids"][0], "loopline.label", json.dumps({"task": "classification", **spec}))
    store = DeltaStore(p.storage_root)
    preds = predictions([1, 2], [0.0, 0.0], [False, False])
    store.append("predictions", preds.set_column(1, "prediction", pa.array(spec["classes"], typed)))

    with pytest.raises(ReviewError, match=unknown):
        label(p, "maybe", keys=["id=1"])
    assert not store.exists("feedback"), "nothing is stored for a refused label"
    res = label(p, given, keys=["id=1"])
    assert res.row["label"] == want and type(res.row["label"]) is type(want)
    assert store.schema("feedback").field("label").type == typed

    out = run_cli("review", "label", "--project", str(project_dir), "--key", "id=2", "--label", "maybe")
    assert out.returncode == 1 and "'maybe' is not" in out.stderr and str(spec["classes"]) in out.stderr
    assert store.read("feedback").num_rows == 1


def test_review_label_keeps_an_older_text_feedback_table_readable(
    project_dir: Path, registry_template: dict[str, Any]
) -> None:
    """An int label appended to a feedback table whose label column is text (written before typed labels)."""
    from loopline import tracking

    _classifier(project_dir)
    p = with_registry(project_dir, registry_template)
    tracking.client(p).set_registered_model_alias("dev.demo", "champion", "1")
    spec = {"task": "classification", "label_type": "int", "classes": [0, 1], "positive_label": 1}
    tracking.client(p).set_tag(registry_template["run_ids"][0], "loopline.label", json.dumps(spec))
    store = DeltaStore(p.storage_root)
    store.append("predictions", predictions([1], [0.0], [False]).set_column(1, "prediction", pa.array([1])))
    old = feedback([None], [1]).set_column(2, "label", pa.array(["0"]))
    store.append("feedback", old)
    res = label(p, 1.0, keys=["id=1"])
    assert res.row["label"] == "1" and sorted(store.read("feedback").column("label").to_pylist()) == ["0", "1"]


def test_review_of_a_trained_classifier_end_to_end(tmp_path: Path) -> None:
    """A bool classifier trained and promoted by loopline: low-confidence rows listed, the expert's label parsed
    with its label contract and stored as a bool, then folded into the features' bool target by the loop."""
    from _lifecycle import features_table, make_project
    from loopline import registry
    from loopline.loop import apply_feedback_labels
    from loopline.training import train

    p = make_project(
        tmp_path,
        {
            "model": {"task": "classification", "target": "label"},
            "training": {"estimator": None, "params": {"max_iter": 5}},
            "gate": None,
        },
    )
    store = DeltaStore(p.storage_root)
    t = features_table()
    store.overwrite("features", t.drop(["y"]).append_column("label", [pa.array(t.column("y").to_numpy() > 7.5)]))
    r = train(p)
    assert r.gate.passed, r.gate.failed_rules
    registry.promote(p)
    log = probability_log([0.55, 0.97, 0.02], [True, True, False], pa.bool_())
    store.append("inference_log", log.drop(["probabilities"]))  # binary-ness from the champion's contract
    assert [f.request_id for f in flagged(p).items] == ["q0"]
    with pytest.raises(ReviewError, match=r"--label 'perhaps' is not a boolean label .* classes are \[False, True\]"):
        label(p, "perhaps", request_id="q0")
    res = label(p, "false", request_id="q0")
    assert res.row["label"] is False and res.row["id"] == 0
    assert store.schema("feedback").field("label").type == pa.bool_()
    assert apply_feedback_labels(p, store) == 1
    after = store.read("features", columns=["id", "label"]).to_pydict()
    assert after["label"][after["id"].index(0)] is False
    assert store.schema("features").field("label").type == pa.bool_()
