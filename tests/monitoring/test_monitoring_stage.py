"""The monitor stage end to end: real MLflow (sqlite), real Delta tables, the report, the CLI."""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from loopline.config import Project, load_project
from loopline.errors import ConfigError, MonitoringError, RegistryError
from loopline.monitoring.monitor import EXIT_BREACH, latest_verdicts, monitor, monitor_job, resolve_window
from loopline.monitoring.performance import check_range, compute_metrics, evaluate_performance, limit_for
from loopline.tables import DeltaStore

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")
YAML = textwrap.dedent(
    """\
    project: mon
    model:
      name: mon
      target: y
      keys: [id]
    gate:
      prediction_range: [-40, 40]
    monitoring:
      window: 7d
      small_sample: 200
      slices: [x3]
      performance: {metric: mae, max_degradation: 0.2}
      max_range_violation_rate: 0.05
    environments:
      dev: {}
    """
)
# extra environments sharing dev's MLflow database (creating one costs seconds), with their own models
SHARED = """\
  bare: {{tracking_uri: "sqlite:///{db}"}}
  notag: {{tracking_uri: "sqlite:///{db}"}}
"""


def truth(x1: np.ndarray, x2: np.ndarray, x3: np.ndarray) -> np.ndarray:
    return 3 * x1 - 2 * x2 + x3


def inputs(rng: np.random.Generator, n: int, shift: bool = False) -> dict[str, np.ndarray]:
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    if shift:
        x1, x2 = x1 * 1.3 + 2, x2 * 1.3 + 2
    return {"x1": x1, "x2": x2, "x3": rng.integers(0, 3, size=n).astype(np.int64)}


@dataclass
class Env:
    root: Path
    project: Project
    store: DeltaStore
    model: object


def log_rows(
    rng: np.random.Generator, model: object, start: datetime, n: int, shift: bool, prefix: str, bias: float
) -> tuple[pa.Table, pa.Table]:
    import pandas as pd

    x = inputs(rng, n, shift)
    pred = model.predict(pd.DataFrame(x))  # type: ignore[attr-defined]
    ids = [f"{prefix}-{i}" for i in range(n)]
    ts = [start + timedelta(minutes=2 * i) for i in range(n)]
    log = pa.table(
        {
            "request_id": ids,
            "timestamp": pa.array(ts, TS),
            "model_name": ["mon"] * n,
            "model_version": ["1"] * n,
            "endpoint": ["invocations"] * n,
            "status": pa.array([200] * n, pa.int64()),
            "latency_ms": np.full(n, 3.0),
            "prediction": pred.astype(np.float64),
            **x,
        }
    )
    labels = truth(x["x1"], x["x2"], x["x3"]) + bias
    fb = pa.table(
        {
            "request_id": ids,
            "id": pa.array([None] * n, pa.int64()),
            "label": labels,
            "received_at": pa.array([t + timedelta(hours=1) for t in ts], TS),
            "_source": ["api"] * n,
        }
    )
    return log, fb


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    from loopline import tracking

    root = tmp_path_factory.mktemp("monproj")
    (root / "loopline.yaml").write_text(YAML + SHARED.format(db=root / ".loopline" / "dev" / "mlflow.db"))
    project = load_project(root)
    store = DeltaStore(project.storage_root)
    rng = np.random.default_rng(42)

    n = 1200
    x = inputs(rng, n)
    y = truth(x["x1"], x["x2"], x["x3"]) + rng.normal(0, 0.5, size=n)
    features = pa.table({"id": np.arange(n), **x, "y": y, "_batch_id": ["train"] * n})
    version = store.append("features", features)
    X = pd.DataFrame(x)
    model = LinearRegression().fit(X[:900], y[:900])
    test_pred = model.predict(X[900:])
    test = compute_metrics("regression", y[900:], test_pred)

    exp = tracking.experiment_id(project)
    with tracking.bound(project), mlflow.start_run(experiment_id=exp):
        mlflow.log_metrics({f"test_{k}": v for k, v in test.items()})
        mlflow.set_tag("loopline.features_version", str(version))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(X, test_pred),
            pip_requirements=["scikit-learn"],
            registered_model_name=project.registered_model,
        )
    tracking.client(project).set_registered_model_alias(
        project.registered_model, "champion", str(info.registered_model_version)
    )

    # a scored batch (same distribution), 2 hours ago; 3 of 500 out of range, labels by key
    xb = inputs(rng, 500)
    ids = np.arange(10_000, 10_500)
    store.append(
        "features", pa.table({"id": ids, **xb, "y": truth(xb["x1"], xb["x2"], xb["x3"]), "_batch_id": ["b1"] * 500})
    )
    pb = model.predict(pd.DataFrame(xb))
    store.append(
        "predictions",
        pa.table(
            {
                "id": ids,
                "prediction": pb,
                "model_name": ["mon"] * 500,
                "model_version": ["1"] * 500,
                "run_id": ["r"] * 500,
                "scored_at": pa.array([NOW - timedelta(hours=2)] * 500, TS),
                "_batch_id": ["b1"] * 500,
                "out_of_range": [i < 3 for i in range(500)],
            }
        ),
    )
    # healthy traffic 3 days ago; drifted traffic with wrong predictions in the last day
    ok_log, ok_fb = log_rows(rng, model, NOW - timedelta(days=3), 300, False, "ok", 0.0)
    bad_log, bad_fb = log_rows(rng, model, NOW - timedelta(hours=20), 300, True, "bad", 5.0)
    store.append("inference_log", pa.concat_tables([ok_log, bad_log]))
    key_fb = pa.table(
        {
            "request_id": pa.array([None] * 500, pa.string()),
            "id": ids,
            "label": truth(xb["x1"], xb["x2"], xb["x3"]),
            "received_at": pa.array([NOW - timedelta(hours=1)] * 500, TS),
            "_source": ["demo"] * 500,
        }
    )
    store.append("feedback", pa.concat_tables([ok_fb, bad_fb, key_fb]))
    return Env(root, project, store, model)


def http_refs(text: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I) + re.findall(r"https?://", text)


# ----------------------------------------------------------------------------- the stage
def test_healthy_window_is_ok(env: Env) -> None:
    res = monitor(env.project, since=NOW - timedelta(days=3, minutes=1), until=NOW - timedelta(days=2), now=NOW)
    assert res.verdict == "ok" and res.exit_code == 0, res.message
    assert res.features_version == 0 and res.model_version == "1"
    assert {f.feature for f in res.drift.features} == {"x1", "x2", "x3"}  # id, y, _batch_id are not inputs
    assert {f.statistic for f in res.drift.features} == {"wasserstein"}  # 300 >= small_sample 200
    assert res.drift.n_current == 300 and res.drift.n_reference == 1200
    assert res.performance is not None and res.performance.verdict == "ok" and res.performance.n_labelled == 300
    assert res.prediction_drift is not None and res.prediction_drift.verdict == "ok"


def test_drifted_window_breaches_and_writes_table_and_report(env: Env) -> None:
    res = monitor(env.project, window=timedelta(days=1), until=NOW, now=NOW + timedelta(minutes=5))
    assert res.verdict == "breach" and res.exit_code == EXIT_BREACH == 10
    assert set(res.breaches) >= {"dataset_drift", "performance", "prediction_drift"}
    assert res.drift.drifted == ["x1", "x2"] and res.drift.share == pytest.approx(2 / 3)
    assert res.drift.n_current == 800  # 300 logged requests + 500 rows of scored batch b1
    perf = res.performance
    assert perf is not None and perf.n_labelled == 800 and perf.verdict == "breach"
    watched = perf.watched
    assert watched is not None and watched.value == pytest.approx(5 * 300 / 800, rel=0.1)
    slices = {c.slice for c in perf.checks if c.slice}
    assert slices == {"x3=0", "x3=1", "x3=2"}
    assert res.range is not None and res.range.n == 800 and res.range.n_out >= 3

    table = env.store.read("monitoring")
    mine = table.filter(pa.compute.equal(table["checked_at"], pa.scalar(res.checked_at, TS)))
    assert mine.num_rows == res.rows.num_rows
    assert set(mine["kind"].to_pylist()) == {"drift", "dataset_drift", "prediction_drift", "performance", "range"}
    assert mine.schema.field("value").type == pa.float64() and mine.schema.field("checked_at").type == TS
    dataset = next(r for r in mine.to_pylist() if r["kind"] == "dataset_drift")
    assert (dataset["feature"], dataset["statistic"], dataset["verdict"]) == ("*", "drift_share", "breach")
    assert dataset["n_reference"] == 1200 and dataset["n_current"] == 800

    assert res.report_html is not None and res.report_json is not None
    html = res.report_html.read_text()
    assert res.report_html.parent == env.project.state_dir / "reports"
    assert "<svg" in html and "x1 · wasserstein" in html and "share of drifted features" in html
    assert "<script" not in html and http_refs(html) == []
    data = json.loads(res.report_json.read_text())
    assert data["verdict"] == "breach" and data["drift"]["drifted"] == ["x1", "x2"] and data["exit_code"] == 10

    latest = latest_verdicts(env.project)
    assert latest["checked_at"] is not None and latest["model_version"] == "1"
    assert latest["kinds"]["dataset_drift"] == "breach" and latest["kinds"]["performance"] == "breach"
    assert latest["verdict"] == "breach"


def test_empty_window_is_no_data(env: Env) -> None:
    res = monitor(env.project, since=datetime(2020, 1, 1), until=datetime(2020, 1, 2), now=NOW, write=False)
    assert res.verdict == "no_data" and res.exit_code == 11
    assert res.message.startswith("no data in window 2020-01-01 00:00 .. 2020-01-02 00:00")
    assert res.drift.verdict == "no_data" and res.performance is not None and res.performance.verdict == "no_data"
    assert res.range is not None and res.range.verdict == "no_data"


def test_performance_and_range_helpers(env: Env) -> None:
    start, end = NOW - timedelta(days=1), NOW
    perf = evaluate_performance(env.project, env.store, start, end, {"mae": 10.0})
    assert perf.verdict == "ok" and perf.watched is not None and perf.watched.threshold == pytest.approx(12.0)
    assert {c.metric for c in perf.checks if c.slice is None} == {"mae", "rmse", "r2"}
    rng = check_range(env.project, env.store, start, end)
    assert rng is not None and rng.share == pytest.approx(rng.n_out / 800)
    assert limit_for("r2", 0.8, 0.25) == pytest.approx(0.6) and limit_for("rmse", 2.0, 0.5) == 3.0
    m = compute_metrics("classification", np.array(["a", "b", "a", "b"]), np.array(["a", "b", "b", "b"]))
    # binary F1 of the positive class (the second in sorted order, "b"): precision 2/3, recall 1 -> 0.8
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.8)


# ----------------------------------------------------------------------------- errors
def test_window_arguments_are_checked() -> None:
    with pytest.raises(MonitoringError, match="give a window length or --since/--until, not both"):
        resolve_window(timedelta(days=7), timedelta(days=1), since=NOW)
    with pytest.raises(MonitoringError, match=r"the window start .* is not before its end"):
        resolve_window(timedelta(days=7), since=NOW, until=NOW - timedelta(hours=1))
    with pytest.raises(MonitoringError, match="the window must be longer than 0 seconds"):
        resolve_window(timedelta(days=7), timedelta(0))
    start, end = resolve_window(timedelta(days=7), until=datetime(2026, 1, 8))
    assert (start, end) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 8, tzinfo=UTC))


def test_bad_performance_metric_is_refused(tmp_path: Path) -> None:
    (tmp_path / "loopline.yaml").write_text(YAML.replace("metric: mae", "metric: roc_auc"))
    with pytest.raises(
        ConfigError, match=r"monitoring\.performance\.metric: 'roc_auc' is not a regression metric \(valid: mae,"
    ):
        load_project(tmp_path)


def test_no_champion_is_a_clear_error(env: Env) -> None:
    with pytest.raises(RegistryError, match=r"registered model 'bare.mon' has no @champion"):
        monitor(load_project(env.root, "bare"), now=NOW)


def test_champion_without_features_version_is_a_clear_error(env: Env) -> None:
    import mlflow
    from sklearn.dummy import DummyRegressor

    from loopline import tracking

    proj = load_project(env.root, "notag")
    with tracking.bound(proj), mlflow.start_run(experiment_id=tracking.experiment_id(proj)):
        info = mlflow.sklearn.log_model(
            DummyRegressor().fit([[0.0]], [0.0]),
            name="model",
            pip_requirements=["scikit-learn"],
            registered_model_name=proj.registered_model,
        )
    tracking.client(proj).set_registered_model_alias(
        proj.registered_model, "champion", str(info.registered_model_version)
    )
    with pytest.raises(MonitoringError, match=r"has no loopline.features_version tag"):
        monitor(proj, now=NOW)
    c = tracking.client(proj)
    run_id = str(c.get_model_version(proj.registered_model, str(info.registered_model_version)).run_id)
    c.set_tag(run_id, "loopline.features_version", "latest")
    with pytest.raises(MonitoringError, match=r"loopline.features_version must be an integer, got 'latest'"):
        monitor(proj, now=NOW)
    c.set_tag(run_id, "loopline.features_version", "0")
    with pytest.raises(MonitoringError, match=r"the features table does not exist, so there is no reference data"):
        monitor(proj, now=NOW)
    with pytest.raises(MonitoringError, match=r"window must be a duration like 7d, 12h or 30m; got 'soon'"):
        monitor_job(proj, window="soon")


def test_unknown_monitoring_column_is_refused(env: Env, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(env.root, tmp_path / "p")
    cfg = tmp_path / "p" / "loopline.yaml"
    cfg.write_text(cfg.read_text().replace("  window: 7d\n", "  window: 7d\n  columns: {nope: {method: psi}}\n"))
    with pytest.raises(MonitoringError, match=r"monitoring.columns.nope: 'nope' is not a monitored model input"):
        monitor(load_project(tmp_path / "p"), now=NOW, write=False)


# ----------------------------------------------------------------------------- CLI
def test_cli_exit_codes(env: Env, cli) -> None:  # type: ignore[no-untyped-def]
    until = NOW.isoformat()
    since = (NOW - timedelta(days=1)).isoformat()
    breach = cli("monitor", "--project", str(env.root), "--since", since, "--until", until)
    assert breach.returncode == 10, breach.stderr
    assert "feature drift" in breach.stdout and "wasserstein" in breach.stdout and "report:" in breach.stdout
    assert "verdict: breach" in breach.stdout

    job = cli("run", "monitor", "--project", str(env.root), "--since", since, "--until", until)
    assert job.returncode == 10, job.stderr
    runs = env.store.read("runs").to_pylist()
    assert any(r["job"] == "monitor" and r["status"] == "ok" for r in runs)

    bad = cli("monitor", "--project", str(env.root), "--since", "yesterday")
    assert bad.returncode == 2 and "must be an ISO 8601 date" in bad.stderr
    both = cli("monitor", "--project", str(env.root), "--window", "1d", "--since", "2020-01-01")
    assert both.returncode == 1 and "not both" in both.stderr


def test_latest_verdicts_without_a_table(tmp_path: Path) -> None:
    (tmp_path / "loopline.yaml").write_text(YAML)
    got = latest_verdicts(load_project(tmp_path))
    assert got == {"checked_at": None, "model_version": None, "verdict": None, "kinds": {}, "rows": []}


def test_values_no_statistic_can_use_are_excluded_and_counted(env: Env) -> None:
    """Older rows may hold what the server refuses now (an int64 of 2**63-1, infinities, 1e300): the
    monitor completes, leaves them out of every statistic and says how many, per column."""
    rng = np.random.default_rng(7)
    start = NOW - timedelta(days=10)
    log, fb = log_rows(rng, env.model, start, 250, False, "odd", 0.0)
    x1, x2, x3, pred = (log.column(c).to_numpy().copy() for c in ("x1", "x2", "x3", "prediction"))
    x3[0] = 2**63 - 1
    x1[1], x1[2] = np.inf, -np.inf
    x2[3] = 1e300
    pred[4] = np.inf
    for name, values in (("x1", x1), ("x2", x2), ("x3", x3), ("prediction", pred)):
        log = log.set_column(log.column_names.index(name), name, pa.array(values))
    label = fb.column("label").to_numpy().copy()
    label[5] = np.inf
    fb = fb.set_column(fb.column_names.index("label"), "label", pa.array(label))
    odd = DeltaStore(env.project.storage_root)
    odd.append("inference_log", log)
    odd.append("feedback", fb)
    res = monitor(
        env.project, since=start - timedelta(minutes=1), until=start + timedelta(days=1), now=NOW, write=False
    )
    assert res.verdict in ("ok", "breach"), res.message
    assert res.drift.excluded == {"x1": 2, "x2": 1, "x3": 1}
    assert res.prediction_drift is not None and res.prediction_drift.excluded == 1
    assert "5 value(s) excluded as not finite or too large (x1: 2, x2: 1, x3: 1, prediction: 1)" in res.message
    x3_row = next(f for f in res.drift.features if f.feature == "x3")
    assert x3_row.n_current == 249 and "1 current value(s) excluded" in x3_row.detail
    assert res.to_dict()["drift"]["excluded"] == {"x1": 2, "x2": 1, "x3": 1}
    assert res.performance is not None and res.performance.n_labelled == 248  # inf label, inf prediction: left out
    assert any("1 feedback label(s) that are not finite numbers were left out" in n for n in res.performance.notes)
