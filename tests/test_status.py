"""`loopline status` and the needs-review flag, on real Delta tables and a real MLflow sqlite registry."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from _support import free_port, run_cli
from loopline.config import Project, load_project
from loopline.errors import LooplineError
from loopline.jobs import RunRecord, append_run
from loopline.tables import DeltaStore

MODEL = "dev.demo"
_TS = pa.timestamp("us", tz="UTC")
MONITORING_SCHEMA = pa.schema(  # docs/contracts.md
    [
        ("checked_at", _TS),
        ("window_start", _TS),
        ("window_end", _TS),
        ("model_version", pa.string()),
        ("kind", pa.string()),
        ("feature", pa.string()),
        ("slice", pa.string()),
        ("statistic", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("verdict", pa.string()),
        ("n_reference", pa.int64()),
        ("n_current", pa.int64()),
    ]
)


@functools.cache
def build_registry_template() -> dict[str, Any]:
    """A sqlite MLflow registry with two versions of a tiny sklearn model of ``dev.demo``.

    Built once per test process (test_review.py shares it) and copied into each project.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from sklearn.linear_model import LinearRegression

    d = Path(tempfile.mkdtemp(prefix="loopline-registry-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = client.create_experiment("/demo/dev", artifact_location=(d / "artifacts").as_uri())
    model = LinearRegression().fit([[0.0], [1.0]], [0.0, 2.0])
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.sklearn.log_model(
            model, name="model", pip_requirements=["scikit-learn"], registered_model_name=MODEL
        )
    second = client.create_run(exp).info.run_id  # version 2: the same model, registered from another run
    client.create_model_version(MODEL, info.model_uri, run_id=second)
    return {"db": d / "mlflow.db", "run_ids": [run.info.run_id, second]}


@pytest.fixture
def registry_template() -> dict[str, Any]:
    return build_registry_template()


def with_registry(project_dir: Path, template: dict[str, Any], env: str = "dev") -> Project:
    """The project (env dev) with a copy of the template registry as its embedded sqlite registry."""
    state = project_dir / ".loopline" / env
    state.mkdir(parents=True, exist_ok=True)
    shutil.copy(template["db"], state / "mlflow.db")
    return load_project(project_dir, env)


def client(p: Project) -> Any:
    from loopline import tracking

    return tracking.client(p)


def monitoring_rows(checked_at: datetime, verdicts: dict[tuple[str, str], str]) -> pa.Table:
    rows = [
        {
            "checked_at": checked_at,
            "window_start": checked_at - timedelta(days=7),
            "window_end": checked_at,
            "model_version": "1",
            "kind": kind,
            "feature": feature,
            "slice": None,
            "statistic": "psi",
            "value": 0.5 if verdict == "breach" else 0.01,
            "threshold": 0.2,
            "verdict": verdict,
            "n_reference": 100,
            "n_current": 50,
        }
        for (kind, feature), verdict in verdicts.items()
    ]
    return pa.Table.from_pylist(rows, schema=MONITORING_SCHEMA)


# ----------------------------------------------------------------------------- nothing present
def test_status_with_nothing_present_says_none(project_dir: Path) -> None:
    from loopline.status import status

    p = load_project(project_dir, "dev")
    report = status(p)
    assert report.registry_exists is False
    assert report.champion is None and report.challenger is None
    assert report.runs == {} and report.monitoring is None and report.tables == []
    assert report.review.needed is False and report.exit_code == 0
    d = json.loads(json.dumps(report.to_dict()))
    assert d["champion"] is None and d["needs_review"]["needed"] is False and d["registered_model"] == MODEL
    # read-only: nothing was created
    assert not (project_dir / ".loopline" / "dev" / "mlflow.db").exists()
    assert not (project_dir / ".loopline" / "dev" / "tables").exists()

    out = run_cli("status", "--project", str(project_dir))
    assert out.returncode == 0, out.stderr
    assert "no registered model 'dev.demo' yet" in out.stdout and "none" in out.stdout
    out = run_cli("status", "--project", str(project_dir), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["exit_code"] == 0


def test_status_unreachable_tracking_server_names_the_uri(project_dir: Path) -> None:
    from loopline.status import status

    port = free_port()
    cfg = (project_dir / "loopline.yaml").read_text()
    cfg = cfg.replace("  dev: {}", f"  dev: {{tracking_uri: 'http://u:secret@127.0.0.1:{port}'}}")
    (project_dir / "loopline.yaml").write_text(cfg)
    p = load_project(project_dir, "dev")
    with pytest.raises(LooplineError, match=rf"cannot reach MLflow at tracking URI http://u:\*\*\*@127.0.0.1:{port}"):
        status(p)


# ----------------------------------------------------------------------------- everything present
def test_status_reports_models_runs_monitoring_and_tables(project_dir: Path, registry_template: dict[str, Any]) -> None:
    from loopline.status import set_needs_review, status

    p = with_registry(project_dir, registry_template)
    c = client(p)
    c.set_registered_model_alias(MODEL, "champion", "1")
    c.set_registered_model_alias(MODEL, "challenger", "2")
    for k, v in {
        "loopline.gate.verdict": "passed",
        "loopline.gate.candidate.mae": "1.25",
        "loopline.gate.candidate.rmse": "2.5",
    }.items():
        c.set_model_version_tag(MODEL, "1", k, v)
    for k, v in {
        "loopline.gate.verdict": "failed",
        "loopline.gate.failed_rules": json.dumps(["mae: 1.4 > 1.3"]),
        "loopline.gate.candidate.mae": "1.4",
        "loopline.gate.champion.mae": "1.25",
        "loopline.gate.champion_version": "1",
    }.items():
        c.set_model_version_tag(MODEL, "2", k, v)

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i, (job, st, err) in enumerate(
        [("train", "ok", None), ("monitor", "failed", "MonitoringError: boom"), ("train", "failed", "bad data")]
    ):
        start = t0 + timedelta(hours=i)
        append_run(p, RunRecord(f"r{i}", job, "dev", start, start + timedelta(seconds=3), st, 3.0, err))  # type: ignore[arg-type]
    store = DeltaStore(p.storage_root)
    store.append("monitoring", monitoring_rows(t0, {("range", "prediction"): "breach"}))
    store.append(
        "monitoring",
        monitoring_rows(
            t0 + timedelta(days=1),
            {
                ("drift", "x"): "breach",
                ("drift", "z"): "ok",
                ("dataset_drift", "*"): "ok",
                ("performance", "mae"): "no_data",
            },
        ),
    )

    report = status(p)
    assert report.registry_exists
    assert report.champion is not None and report.challenger is not None
    assert report.champion.version == "1" and report.champion.run_id == registry_template["run_ids"][0]
    assert report.champion.gate_verdict == "passed" and report.champion.gate_metrics == {"mae": 1.25, "rmse": 2.5}
    assert report.challenger.version == "2" and report.challenger.gate_verdict == "failed"
    assert report.challenger.failed_rules == ["mae: 1.4 > 1.3"]
    assert report.challenger.champion_metrics == {"mae": 1.25} and report.challenger.compared_with == "1"
    assert report.runs["train"].run_id == "r2" and report.runs["train"].status == "failed"
    assert list(report.runs) == ["train", "monitor"]
    m = report.monitoring
    assert m is not None and m.checked_at == t0 + timedelta(days=1) and m.rows == 4
    assert m.verdict == "breach"
    assert m.breaches == [
        {"kind": "drift", "feature": "x", "slice": None, "statistic": "psi", "value": 0.5, "threshold": 0.2}
    ]
    assert m.per_class == {}  # a regression check has no per-class rows
    assert m.kinds == {"drift": "breach", "dataset_drift": "ok", "performance": "no_data"}
    sizes = {t.name: t.rows for t in report.tables}
    assert sizes == {"monitoring": 5, "runs": 3}
    assert report.exit_code == 0 and report.latest is None  # the newest version is the challenger
    d = json.loads(json.dumps(report.to_dict()))
    assert d["challenger"]["gate_metrics"] == {"mae": 1.4}
    assert d["runs"]["monitor"]["error"] == "MonitoringError: boom" and d["runs"]["ingest"] is None

    set_needs_review(p, "3 candidates in a row failed the gate (last: v2)")
    out = run_cli("status", "--project", str(project_dir), "--env", "dev")
    assert out.returncode == 12, out.stderr
    for text in (
        "NEEDS HUMAN REVIEW",
        "3 candidates in a row failed the gate",
        "champion",
        "v1",
        "passed",
        "mae=1.25",
        "challenger",
        "v2",
        "failed: mae: 1.4 > 1.3",
        "breach drift: x",
        "monitor",
        "MonitoringError: boom",
        "runs",
        "exit code 12",
    ):
        assert text in out.stdout, text


# ----------------------------------------------------------------------------- needs review
def test_needs_review_set_clear_and_exit_code(project_dir: Path, registry_template: dict[str, Any]) -> None:
    from loopline.status import (
        NEEDS_REVIEW_REASON_TAG,
        NEEDS_REVIEW_TAG,
        clear_needs_review,
        needs_review,
        review_cleared_at,
        set_needs_review,
        status,
    )

    p = with_registry(project_dir, registry_template)
    assert needs_review(p) is None
    set_needs_review(p, "3 candidates in a row failed the gate (last: v2)")
    tags = client(p).get_registered_model(MODEL).tags
    assert tags[NEEDS_REVIEW_TAG] == "true" and tags[NEEDS_REVIEW_REASON_TAG].startswith("3 candidates")
    assert needs_review(p) == "3 candidates in a row failed the gate (last: v2)"
    report = status(p)
    assert report.review.needed and report.exit_code == 12
    assert report.champion is None and report.latest is not None and report.latest.version == "2"  # no aliases yet
    assert report.to_dict()["needs_review"]["reason"].startswith("3 candidates")

    assert clear_needs_review(p) == "3 candidates in a row failed the gate (last: v2)"
    assert needs_review(p) is None and status(p).exit_code == 0
    assert clear_needs_review(p) is None  # idempotent
    cleared = review_cleared_at(p)
    assert cleared is not None and abs((datetime.now(UTC) - cleared).total_seconds()) < 60


def test_set_needs_review_creates_the_registered_model(project_dir: Path, registry_template: dict[str, Any]) -> None:
    from loopline.status import needs_review, set_needs_review

    p = with_registry(project_dir, registry_template, env="prod")  # the template holds dev.demo only
    set_needs_review(p, "manual hold")
    assert needs_review(p) == "manual hold"
    assert client(p).get_registered_model("prod.demo").name == "prod.demo"


# ----------------------------------------------------------------------------- classifiers: per-class views
def per_class_rows(checked_at: datetime) -> pa.Table:
    """What the monitor writes for a bool classifier: per-class statistics and the confusion matrix's cells."""
    base = {
        "checked_at": checked_at,
        "window_start": checked_at - timedelta(days=7),
        "window_end": checked_at,
        "model_version": "1",
        "kind": "performance",
        "threshold": None,
        "verdict": "ok",
        "n_reference": 0,
        "n_current": 0,
    }
    rows = [{**base, "feature": "f1", "slice": None, "statistic": "f1", "value": 0.5, "threshold": 0.7}]
    values = {
        "false": {"precision": 0.9, "recall": 0.95, "f1": 0.92, "support": 80.0},
        "true": {"precision": 0.6, "recall": 0.3, "f1": 0.4, "support": 20.0},
    }
    for label, stats in values.items():
        for stat, value in stats.items():
            breach = label == "true" and stat == "recall"
            rows.append(
                {
                    **base,
                    "feature": "per_class",
                    "slice": f"class={label}",
                    "statistic": stat,
                    "value": value,
                    "threshold": 0.6 if breach else None,
                    "verdict": "breach" if breach else "ok",
                }
            )
    for true, pred, count in (("false", "false", 76), ("false", "true", 4), ("true", "false", 14), ("true", "true", 6)):
        rows.append(
            {
                **base,
                "feature": "confusion_matrix",
                "slice": f"class={true}",
                "statistic": f"predicted={pred}",
                "value": float(count),
            }
        )
    return pa.Table.from_pylist(rows, schema=MONITORING_SCHEMA)


def test_status_shows_per_class_views_of_a_classifier(project_dir: Path, registry_template: dict[str, Any]) -> None:
    from loopline.status import status

    p = with_registry(project_dir, registry_template)
    c = client(p)
    c.set_registered_model_alias(MODEL, "champion", "1")
    gate_view = {
        "classes": [False, True],
        "precision": [0.93, 0.8],
        "recall": [0.96, 0.7],
        "f1": [0.94, 0.75],
        "support": [40, 10],
        "confusion_matrix": [[38, 2], [3, 7]],
    }
    c.set_model_version_tag(MODEL, "1", "loopline.gate.per_class", json.dumps(gate_view))
    c.set_model_version_tag(MODEL, "1", "loopline.gate.candidate.f1", "0.75")
    DeltaStore(p.storage_root).append("monitoring", per_class_rows(datetime(2026, 1, 2, tzinfo=UTC)))

    report = status(p)
    assert report.champion is not None and report.champion.per_class == gate_view
    m = report.monitoring
    assert m is not None
    assert m.per_class == {
        "classes": ["false", "true"],
        "precision": [0.9, 0.6],
        "recall": [0.95, 0.3],
        "f1": [0.92, 0.4],
        "support": [80, 20],
        "verdicts": {"precision": ["ok", "ok"], "recall": ["ok", "breach"], "f1": ["ok", "ok"]},
        "confusion_matrix": [[76, 4], [14, 6]],
    }
    assert m.kinds == {"performance": "breach"}  # the per-class recall row breached
    d = json.loads(json.dumps(report.to_dict()))
    assert d["champion"]["per_class"]["classes"] == [False, True]
    assert d["monitoring"]["per_class"]["confusion_matrix"] == [[76, 4], [14, 6]]

    out = run_cli("status", "--project", str(project_dir))
    assert out.returncode == 0, out.stderr
    assert "champion v1 per class (gate): false P=0.93 R=0.96 F1=0.94 n=40 · true P=0.80 R=0.70 F1=0.75 n=10" in (
        out.stdout
    )
    assert "per class (window): false P=0.90 R=0.95 F1=0.92 n=80 · true P=0.60 R=0.30 F1=0.40 n=20" in out.stdout
    assert "breach performance: per_class [class=true] recall = 0.3 (threshold 0.6)" in out.stdout
    out = run_cli("status", "--project", str(project_dir), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["monitoring"]["per_class"]["recall"] == [0.95, 0.3] and data["champion"]["per_class"]["support"] == [
        40,
        10,
    ]
