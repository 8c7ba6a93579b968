"""The closed loop on real parts: MLflow (sqlite), Delta tables, the gate, the registry, monitoring."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from loopline.config import Project, load_project
from loopline.tables import DeltaStore

CONFIG = """\
project: looptest
model: {name: m, target: y, keys: [id], time_column: ts}
training:
  estimator: sklearn.ensemble.HistGradientBoostingRegressor
  params: {max_iter: 60, random_state: 0}
  split: {method: time, valid: 0.2, test: 0.2}
gate:
  thresholds: {mae: {max: MAE_MAX}}
  min_improvement: {mae: {relative: GAIN}}
  prediction_range: [-1000, 1000]
batch:
  query: "select * from features where _batch_id = 'BATCH'"
monitoring: {source: batch, drift_share: 0.5, time: wall}  # windows: when rows were scored
retraining: {triggers: [drift, performance], max_gate_failures: 2}
environments: {dev: {}}
"""


def features(batch: str, start: int, n: int, shift: float, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(0, 10, n) + shift
    x2 = rng.uniform(0, 5, n)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return pa.table(
        {
            "id": np.arange(start, start + n),
            "ts": pa.array(
                [t0 + timedelta(hours=int(i)) for i in range(start, start + n)], pa.timestamp("us", tz="UTC")
            ),
            "x1": x1,
            "x2": x2,
            "y": 3 * x1 + x2 + rng.normal(0, 0.3, n),
            "_batch_id": [batch] * n,
        }
    )


def make_project(root: Path, mae_max: float, batch: str, gain: float = 0.0) -> Project:
    """``gain``: the relative improvement over the champion a candidate must show (0.99: none can)."""
    text = CONFIG.replace("MAE_MAX", str(mae_max)).replace("BATCH", batch).replace("GAIN", str(gain))
    (root / "loopline.yaml").write_text(text)
    return load_project(root, "dev")


def decisions(store: DeltaStore, loop_id: str) -> list[tuple[str, str]]:
    rows = store.read("decisions").to_pylist()
    return [(r["step"], r["outcome"]) for r in sorted(rows, key=lambda r: r["timestamp"]) if r["loop_id"] == loop_id]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    from loopline.loop import loop

    p = make_project(tmp_path, 5.0, "b1")
    store = DeltaStore(p.storage_root)
    store.append("features", features("b1", 0, 600, 0.0, 1))
    first = loop(p)  # no champion yet: the loop bootstraps a first model
    assert first.action == f"promoted v{first.candidate_version}"
    assert decisions(store, first.loop_id) == [
        ("monitor", "skipped"),
        ("train", "ok"),
        ("gate", "passed"),
        ("promote", "promoted"),
    ]
    return p


def drifted_batch(p: Project, batch: str, start: int, seed: int) -> Project:
    from loopline.batch import score

    DeltaStore(p.storage_root).append("features", features(batch, start, 1500, 8.0, seed))
    p = make_project(p.root, 5.0, batch)
    score(p, batch_id=batch)
    return p


def test_breach_retrains_gates_and_promotes(project: Project) -> None:
    from loopline import tracking
    from loopline.loop import loop

    t0 = datetime.now(UTC) - timedelta(seconds=1)
    p = drifted_batch(project, "b2", 600, 2)
    turn = loop(p, since=t0)
    assert "drift" in turn.triggers
    assert turn.monitor is not None and turn.monitor.verdict == "breach"
    assert turn.action == "promoted v2" and turn.exit_code == 0
    champion = tracking.alias_version(p, tracking.CHAMPION)
    assert champion is not None and str(champion.version) == "2"
    store = DeltaStore(p.storage_root)
    assert decisions(store, turn.loop_id) == [
        ("monitor", "breach"),
        ("train", "ok"),
        ("gate", "passed"),
        ("promote", "promoted"),
    ]
    gate_row = next(
        r for r in store.read("decisions").to_pylist() if r["loop_id"] == turn.loop_id and r["step"] == "gate"
    )
    refs = json.loads(gate_row["refs"])
    assert refs["version"] == "2" and refs["champion_version"] == "1" and "mae" in refs["candidate"]


def test_no_breach_no_action(project: Project) -> None:
    from loopline.batch import score
    from loopline.loop import loop

    t0 = datetime.now(UTC) - timedelta(seconds=1)
    DeltaStore(project.storage_root).append("features", features("b2", 600, 300, 0.0, 3))
    p = make_project(project.root, 5.0, "b2")
    score(p, batch_id="b2")
    turn = loop(p, since=t0)
    assert turn.triggers == [] and turn.action == "no action" and turn.exit_code == 0


def test_refusals_lead_to_human_review(project: Project) -> None:
    from loopline import status, tracking
    from loopline.loop import EXIT_NEEDS_REVIEW, EXIT_REFUSED, loop
    from loopline.review import clear

    t0 = datetime.now(UTC) - timedelta(seconds=1)
    p = drifted_batch(project, "b2", 600, 2)
    strict = make_project(p.root, 5.0, "b2", gain=0.99)  # no candidate can be 99% better than the champion
    first = loop(strict, since=t0)
    assert first.exit_code == EXIT_REFUSED and "refused" in first.action
    second = loop(strict, since=t0)
    assert second.exit_code == EXIT_NEEDS_REVIEW
    assert "2 candidates in a row failed the gate" in (status.needs_review(strict) or "")
    third = loop(strict, since=t0)
    assert third.exit_code == EXIT_NEEDS_REVIEW and third.action == "blocked: needs review"
    champion = tracking.alias_version(strict, tracking.CHAMPION)
    assert champion is not None and str(champion.version) == "1", "refused candidates never reach champion"
    clear(strict, reason="threshold reviewed")
    assert status.needs_review(strict) is None
    fourth = loop(strict, since=t0)
    assert fourth.exit_code == EXIT_REFUSED, "failures before the human review do not count again"


def test_loop_cli_exit_codes(project: Project, cli) -> None:  # type: ignore[no-untyped-def]
    t0 = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    p = drifted_batch(project, "b2", 600, 2)
    (p.root / "loopline.yaml").write_text(
        (p.root / "loopline.yaml").read_text().replace("mae: {relative: 0.0}", "mae: {relative: 0.99}")
    )
    r = cli("loop", "--since", t0, cwd=p.root)
    assert r.returncode == 4, r.stderr
    assert "refused" in r.stdout
    r = cli("loop", "--since", "yesterday", cwd=p.root)
    assert r.returncode == 2
    assert "must be an ISO 8601 date or time like 2026-01-31 or 2026-01-31T12:00, got 'yesterday'" in r.stderr
    r = cli("runs", "--job", "loop", cwd=p.root)
    assert r.returncode == 0 and "loop" in r.stdout


def test_feedback_labels_fill_the_target(tmp_path: Path) -> None:
    from loopline.loop import apply_feedback_labels

    p = make_project(tmp_path, 5.0, "b1")
    store = DeltaStore(p.storage_root)
    store.append("features", features("b1", 0, 5, 0.0, 1))
    fb = pa.table(
        {
            "id": [1, 3, 3, 99],
            "label": [10.0, 30.0, 33.0, 1.0],
            "received_at": pa.array(
                [datetime(2026, 1, d, tzinfo=UTC) for d in (1, 1, 2, 1)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    store.append("feedback", fb)
    assert apply_feedback_labels(p, store) == 2
    y = dict(zip(*store.read("features", columns=["id", "y"]).to_pydict().values(), strict=True))
    assert y[1] == 10.0 and y[3] == 33.0, "the latest label per key wins"


CLASSIFIER = """\
project: looptest
model: {name: m, task: classification, target: label, keys: [id]}
environments: {dev: {}}
"""


def labelled_features(label: pa.Array) -> pa.Table:
    n = len(label)
    return pa.table({"id": pa.array(range(n), pa.int64()), "x": pa.array([0.5] * n), "label": label})


def feedback_rows(ids: list[Any], labels: pa.Array) -> pa.Table:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return pa.table(
        {
            "id": pa.array(ids),
            "label": labels,
            "received_at": pa.array([t0 + timedelta(minutes=i) for i in range(len(ids))], pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.mark.parametrize(
    ("target", "labels", "want", "refused"),
    [
        # typed labels (the feedback contract): int, bool and text targets
        (pa.array([0, 0, 0], pa.int64()), pa.array([1, 0], pa.int64()), [1, 0, 0], None),
        (pa.array([False, False, False]), pa.array([True, False]), [True, False, False], None),
        (pa.array(["no", "no", "no"]), pa.array(["yes", "no"]), ["yes", "no", "no"], None),
        # an older text feedback table: parsed like the label contract ("1" is 1, "true" is True)
        (pa.array([0, 0, 0], pa.int64()), pa.array(["1", "maybe"]), [1, 0, 0], "'maybe' (type int64)"),
        (pa.array([False, False, False]), pa.array(["true", "2"]), [True, False, False], "'2' (type bool)"),
        # a typed int label into a text target
        (pa.array(["0", "0", "0"]), pa.array([1, 0], pa.int64()), ["1", "0", "0"], None),
    ],
    ids=["int", "bool", "str", "int-from-text", "bool-from-text", "str-from-int"],
)
def test_feedback_labels_are_cast_to_the_targets_type(
    tmp_path: Path, target: pa.Array, labels: pa.Array, want: list[Any], refused: str | None
) -> None:
    from loopline.loop import apply_feedback_labels

    (tmp_path / "loopline.yaml").write_text(CLASSIFIER)
    p = load_project(tmp_path, "dev")
    store = DeltaStore(p.storage_root)
    store.append("features", labelled_features(target))
    store.append("feedback", feedback_rows([0, 1], labels))
    report: list[str] = []
    n = apply_feedback_labels(p, store, report)
    got = dict(zip(*store.read("features", columns=["id", "label"]).to_pydict().values(), strict=True))
    assert [got[i] for i in range(3)] == want
    assert store.schema("features").field("label").type == target.type
    if refused is None:
        assert n == 2 and report == []
    else:
        assert n == 1
        assert report == [f"1 feedback label(s) could not be cast to the features table's types: label {refused} (1)"]


def test_feedback_keys_sent_as_text_still_match(tmp_path: Path) -> None:
    from loopline.loop import apply_feedback_labels

    (tmp_path / "loopline.yaml").write_text(CLASSIFIER)
    p = load_project(tmp_path, "dev")
    store = DeltaStore(p.storage_root)
    store.append("features", labelled_features(pa.array([0, 0, 0], pa.int64())))
    store.append("feedback", feedback_rows(["2", "x"], pa.array([1, 1], pa.int64())))
    report: list[str] = []
    assert apply_feedback_labels(p, store, report) == 1
    got = dict(zip(*store.read("features", columns=["id", "label"]).to_pydict().values(), strict=True))
    assert got == {0: 0, 1: 0, 2: 1}
    assert report == ["1 feedback label(s) could not be cast to the features table's types: key 'x' (type int64) (1)"]


def test_always_trigger_retrains_only_with_new_labels(project: Project) -> None:
    """`always` retrains every turn, but not without labelled rows the champion has not trained on."""
    from loopline.loop import loop

    text = (project.root / "loopline.yaml").read_text()
    text = text.replace("triggers: [drift, performance]", "triggers: [always], min_new_labels: 50")
    (project.root / "loopline.yaml").write_text(text)
    p = load_project(project.root, "dev")
    t0 = datetime.now(UTC) - timedelta(seconds=1)
    idle = loop(p, since=t0)
    assert idle.triggers == ["always"] and idle.action == "no action: too few new labels"
    store = DeltaStore(p.storage_root)
    skipped = next(
        r for r in store.read("decisions").to_pylist() if r["loop_id"] == idle.loop_id and r["step"] == "retrain"
    )
    assert json.loads(skipped["reasons"]) == [
        "0 labelled row(s) arrived since champion v1 was trained (retraining.min_new_labels: 50)"
    ]
    store.append("features", features("b1", 600, 120, 0.0, 5))  # 120 newer labelled rows
    turn = loop(p, since=t0)
    assert turn.candidate_version == "2", turn.action
