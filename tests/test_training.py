"""Training: real Delta features table, real MLflow (sqlite in tmp_path), registered version + gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest

from _lifecycle import BROKEN_HOOKS, features_table, make_project, one_thread  # noqa: F401  (fixture, used by pytestmark)
from loopline import tracking
from loopline.context import context
from loopline.errors import ConfigError, TrainingError
from loopline.tables import DeltaStore
from loopline.training import git_info, pip_requirements, split_frame, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_records_everything_and_passes_the_gate_without_champion(tmp_path: Path) -> None:
    p = make_project(tmp_path)
    r = train(p)
    assert r.version == "1" and r.model == "dev.demo" and r.features_version == 0
    assert (r.n_train, r.n_valid, r.n_test) == (240, 80, 80)
    assert r.gate.passed and r.gate.champion_version is None and r.refit
    assert r.gate.notes == [
        "metrics of the evaluated candidate (trained without these 80 rows); registered v1 is its refit on every "
        "labelled row",
        "no champion yet: only absolute thresholds applied",
    ]
    c = tracking.client(p)
    assert str(c.get_model_version_by_alias("dev.demo", "challenger").version) == "1"

    run = c.get_run(r.run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["loopline.features_uri"] == f"{p.storage_root}/features"
    assert tags["loopline.features_version"] == "0"
    assert tags["loopline.git_commit"] == "unknown" and tags["loopline.git_dirty"] == "unknown"
    assert len(tags["loopline.config_hash"]) == 64
    assert tags["loopline.version"] == "0.1.0" and tags["loopline.env"] == "dev"
    assert json.loads(tags["loopline.split"])["method"] == "time"
    assert tags["loopline.gate.verdict"] == "passed"
    assert params == {"max_iter": "15", "random_state": "0"}
    for m in (
        "valid_mae",
        "valid_rmse",
        "valid_r2",
        "test_mae",
        "test_rmse",
        "test_r2",
        "training_duration_s",
        "gate_candidate_mae",
    ):
        assert m in metrics
    assert metrics["test_mae"] == pytest.approx(r.gate.candidate_metrics["mae"])
    assert run.info.experiment_id == c.get_experiment_by_name("/demo/dev").experiment_id
    # the registered model is the refit on all 400 labelled rows; the evaluated candidate is a linked nested run
    assert tags["loopline.refit"] == "true" and tags["loopline.trained_rows"] == "400"
    assert tags["loopline.trained_until"].startswith("2024-01-17T15:00:00")  # the newest row's event time
    evaluated = c.get_run(tags["loopline.evaluation_run_id"])
    assert evaluated.data.tags["loopline.refit_run_id"] == r.run_id
    assert evaluated.data.tags["loopline.trained_rows"] == "320"  # training + validation rows
    assert evaluated.data.metrics["test_mae"] == pytest.approx(metrics["test_mae"])

    (ds_input,) = run.inputs.dataset_inputs
    assert ds_input.dataset.source_type == "delta_table"
    source = json.loads(ds_input.dataset.source)
    assert source == {"path": f"{p.storage_root}/features", "delta_table_version": 0}

    mv = c.get_model_version("dev.demo", "1")
    assert mv.tags["loopline.gate.verdict"] == "passed"
    assert json.loads(mv.tags["loopline.gate.failed_rules"]) == []
    assert float(mv.tags["loopline.gate.candidate.mae"]) == pytest.approx(r.gate.candidate_metrics["mae"])

    local = Path(tracking.download(context(p), "models:/dev.demo/1", dst_path=str(tmp_path / "dl")))
    reqs = (local / "requirements.txt").read_text().split()
    assert any(req.startswith("scikit-learn==") for req in reqs) and any(req.startswith("skops==") for req in reqs)
    mlmodel = (local / "MLmodel").read_text()
    assert "serialization_format: skops" in mlmodel and "signature:" in mlmodel
    assert (local / "input_example.json").exists()
    with tracking.bound(p):
        sig = mlflow.models.get_model_info("models:/dev.demo/1").signature
    assert sig.inputs.input_names() == ["x1", "x2", "x3"]


def test_data_version_pins_the_features_snapshot(tmp_path: Path) -> None:
    p = make_project(tmp_path)
    DeltaStore(p.storage_root).overwrite("features", features_table(n=200, seed=5))  # version 1
    r = train(p, data_version=0)
    assert r.features_version == 0 and r.n_train + r.n_valid + r.n_test == 400
    assert tracking.client(p).get_run(r.run_id).data.tags["loopline.features_version"] == "0"
    with pytest.raises(Exception, match=r"cannot open table 'features' at version 7"):
        train(p, data_version=7)


def test_max_depth_minus_three_is_a_config_error(tmp_path: Path) -> None:
    p = make_project(tmp_path)
    with pytest.raises(ConfigError) as exc:
        train(p, params_override={"max_depth": -3})
    assert exc.value.message == (
        "loopline.yaml: training.params.max_depth must be an int in the range [1, inf) or None, got -3"
    )
    with pytest.raises(
        ConfigError,
        match=r"training.params.max_deep is not a parameter of "
        r"HistGradientBoostingRegressor",
    ):
        train(p, params_override={"max_deep": 3})
    # nothing reached MLflow
    assert tracking.client(p).search_model_versions("name = 'dev.demo'") == []


def test_estimator_and_split_config_errors(tmp_path: Path) -> None:
    p = make_project(tmp_path / "a", {"training": {"estimator": "sklearn.ensemble.NoSuchRegressor"}})
    with pytest.raises(ConfigError, match=r"training.estimator 'sklearn.ensemble.NoSuchRegressor' cannot be imported"):
        train(p)
    p = make_project(tmp_path / "b", {"model": {"time_column": None}})
    with pytest.raises(
        ConfigError,
        match=r"training.split.method is time, but neither training.split.column nor "
        "model.time_column is set",
    ):
        train(p)
    p = make_project(tmp_path / "c", {"model": {"target": "label"}})
    with pytest.raises(TrainingError, match=r"has no target column 'label'"):
        train(p)
    with pytest.raises(ConfigError, match=r"gate.thresholds.auc: 'auc' is not a regression metric \(valid: mae, "):
        make_project(tmp_path / "d", {"gate": {"thresholds": {"auc": {"min": 0.5}}}})


def test_split_random_is_seeded_and_time_split_puts_latest_rows_in_test() -> None:
    from loopline.config import SplitConfig

    df = features_table(n=100).to_pandas().sample(frac=1, random_state=1)
    tr, va, te = split_frame(df, SplitConfig(method="time", valid=0.2, test=0.1), "ts", "loopline.yaml")
    assert (len(tr), len(va), len(te)) == (70, 20, 10)
    assert tr["ts"].max() < va["ts"].min() and va["ts"].max() < te["ts"].min()
    a = split_frame(df, SplitConfig(method="random", seed=3), None, "f")[2]
    b = split_frame(df, SplitConfig(method="random", seed=3), None, "f")[2]
    assert a["id"].tolist() == b["id"].tolist()
    with pytest.raises(TrainingError, match=r"has 2 labelled row\(s\); a train/validation/test split needs at least 3"):
        split_frame(df.head(2), SplitConfig(), None, "f")


def test_optuna_search_logs_nested_trials_and_refits_best(tmp_path: Path) -> None:
    search = {
        "n_trials": 3,
        "space": {
            "max_iter": {"type": "int", "low": 5, "high": 30},
            "learning_rate": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
        },
    }
    p = make_project(tmp_path, {"training": {"search": search}})
    r = train(p)
    assert r.trials == 3 and r.gate.passed
    c = tracking.client(p)
    exp = c.get_experiment_by_name("/demo/dev").experiment_id
    children = c.search_runs([exp], f"tags.mlflow.parentRunId = '{r.run_id}'")
    assert sorted(ch.info.run_name for ch in children) == ["evaluated-candidate", "trial-0", "trial-1", "trial-2"]
    children = [ch for ch in children if ch.info.run_name.startswith("trial-")]
    assert all("valid_mae" in ch.data.metrics for ch in children)
    best = min(children, key=lambda ch: ch.data.metrics["valid_mae"])
    assert c.get_run(r.run_id).data.params["max_iter"] == best.data.params["max_iter"]


def test_hook_training_and_lightgbm(tmp_path: Path) -> None:
    p = make_project(
        tmp_path / "h",
        {"training": {"estimator": None, "hook": "lifehooks:train_ok"}},
        extra_files={"lifehooks.py": BROKEN_HOOKS},
    )
    r = train(p)
    assert r.gate.passed and r.metrics["test_mae"] < 1.0
    p = make_project(
        tmp_path / "l",
        {"training": {"estimator": "lightgbm.LGBMRegressor", "params": {"n_estimators": 20, "verbose": -1}}},
    )
    r = train(p)
    assert r.gate.passed
    reqs = (
        Path(tracking.download(context(p), "models:/dev.demo/1", dst_path=str(tmp_path / "dl"))) / "requirements.txt"
    ).read_text()
    assert "lightgbm==" in reqs


def test_pip_requirements_are_explicit_and_pinned() -> None:
    from sklearn.linear_model import LinearRegression

    reqs = pip_requirements(LinearRegression(), "skops", ["extra-pkg>=1"])
    names = {r.split("==")[0].split(">=")[0].lower() for r in reqs}
    assert {"mlflow", "scikit-learn", "skops", "numpy", "pandas", "extra-pkg"} <= names
    assert all("==" in r for r in reqs if not r.startswith("extra-pkg"))


def test_git_info_of_the_project_folder(tmp_path: Path) -> None:
    import subprocess

    assert git_info(tmp_path) == ("unknown", "unknown")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run(
        ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"], check=True
    )
    commit, dirty = git_info(tmp_path)
    assert len(commit) == 40 and dirty == "false"
    (tmp_path / ".loopline").mkdir()
    (tmp_path / ".loopline" / "state").write_text("ignored")
    assert git_info(tmp_path)[1] == "false"
    (tmp_path / "a.txt").write_text("b")
    assert git_info(tmp_path)[1] == "true"


def test_cli_train_promote_and_gate_refusal_exit_code(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from _support import run_cli
    from loopline.cli import _register, app
    from loopline.errors import RegistryError

    _register()
    runner = CliRunner()
    make_project(tmp_path, {"training": {"refit": False}})  # the same rows twice: compare like with like
    first = runner.invoke(app, ["run", "train", "--project", str(tmp_path), "--env", "dev"])
    assert first.exit_code == 0, first.output
    assert "version 1" in first.output and "gate verdict: passed" in first.output
    promoted = runner.invoke(app, ["promote", "--project", str(tmp_path)])
    assert promoted.exit_code == 0, promoted.output
    assert "promote: dev.demo @champion (none) -> version 1" in promoted.output
    # the real console command: a refused gate exits 4
    again = run_cli("run", "train", "--project", str(tmp_path), "--json", env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 4, again.stderr
    data = json.loads(again.stdout)
    assert data["version"] == "2" and data["gate"]["verdict"] == "failed"
    rules = data["gate"]["failed_rules"]
    assert any(r.startswith("min_improvement.mae: candidate mae ") for r in rules), rules
    refused = runner.invoke(app, ["promote", "--version", "2", "--project", str(tmp_path)])
    assert isinstance(refused.exception, RegistryError)
    assert "version 2 of dev.demo has not passed the gate (verdict: failed; failed rules: " in refused.exception.message
    hist = runner.invoke(app, ["history", "--project", str(tmp_path), "--json"])
    rows = json.loads(hist.output)
    assert [(r["action"], r["to_version"]) for r in rows] == [("promote", "1")]
    table = runner.invoke(app, ["history", "--project", str(tmp_path)])
    assert "registry history: dev.demo" in table.output and "promote" in table.output
    c = tracking.client(make_project.__globals__["load_project"](tmp_path, "dev"))
    assert str(c.get_model_version_by_alias("dev.demo", "champion").version) == "1"


def _classification_project(tmp_path: Path, overrides: dict[str, Any], n: int = 800, unlabelled: int = 0) -> Any:
    """A binary text-label project ("no"/"yes", positive "yes"); ``unlabelled`` rows have a null target."""
    import numpy as np
    import pyarrow as pa

    from _lifecycle import features_table
    from loopline.tables import DeltaStore

    base = {
        "model": {"task": "classification", "target": "label", "positive_label": "yes"},
        "training": {"estimator": None, "params": {"max_iter": 20, "random_state": 0}},
        "gate": {"thresholds": None, "min_improvement": None, "prediction_range": None},
    }
    p = make_project(tmp_path, _deep(base, overrides))
    t = features_table(n=n)
    rng = np.random.default_rng(0)
    score = t.column("y").to_numpy() + rng.normal(0, 2.0, n)
    label = np.where(score > 9.0, "yes", "no").astype(object)
    label[n - unlabelled :] = None  # the newest labels have not arrived
    DeltaStore(p.storage_root).overwrite("features", t.drop(["y"]).append_column("label", pa.array(label.tolist())))
    return p


def _deep(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("optimise", ["f1", "youden", "cost"])
def test_threshold_chosen_on_validation_rows_is_what_the_model_predicts_with(tmp_path: Path, optimise: str) -> None:
    from loopline import runtime
    from loopline.labels import from_config

    gate = {"threshold": {"optimise": optimise, "cost": {"fp": 1.0, "fn": 5.0}}}
    p = _classification_project(tmp_path, {"gate": gate})
    r = train(p)
    threshold = r.label["threshold"]
    assert 0.0 < threshold < 1.0 and r.label["positive_label"] == "yes"
    rt = runtime.load(r.model_uri, from_config(p.config.model), ctx=context(p))
    assert rt.spec.threshold == threshold
    frame = _features_frame(p)
    out = rt.predict_frame(frame)
    pos = list(rt.spec.classes).index("yes")
    expected = ["yes" if q >= threshold else "no" for q in out.proba[:, pos]]  # type: ignore[index]
    assert out.predictions.tolist() == expected
    # the registered sklearn model applies the same threshold: MLflow users get the same labels
    assert rt.pyfunc.predict(frame[rt.signature.names]).tolist() == expected
    if optimise == "cost":  # false negatives cost 5x: a threshold below 0.5 catches more positives
        assert threshold < 0.5


def test_fixed_threshold_and_calibration(tmp_path: Path) -> None:
    import numpy as np

    p = _classification_project(tmp_path / "a", {"model": {"threshold": 0.3}, "training": {"calibrate": "isotonic"}})
    r = train(p)
    assert r.label["threshold"] == 0.3 and r.gate.passed
    from loopline import tracking

    model = tracking.load_model(r.model_uri, context(p)).get_raw_model()
    assert type(model).__name__ == "FixedThresholdClassifier"
    inner = model.estimator_.estimator  # FrozenEstimator -> the calibrated refit
    assert type(inner).__name__ == "CalibratedClassifierCV"
    proba = model.predict_proba(_features_frame(p)[["x1", "x2", "x3"]])[:, 1]
    assert np.all((proba >= 0) & (proba <= 1))


def test_rows_without_a_label_are_left_out_and_counted(tmp_path: Path) -> None:
    p = _classification_project(tmp_path, {}, unlabelled=50)
    r = train(p)
    assert r.n_unlabelled == 50 and r.n_train + r.n_valid + r.n_test == 750
    assert "50 row(s) without a label (target null) were left out" in r.notes
    run = tracking.client(p).get_run(r.run_id)
    assert run.data.tags["loopline.unlabelled_rows"] == "50" and run.data.tags["loopline.trained_rows"] == "750"


def test_classification_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.threshold must be a number < 1.0, got 1.5"):
        make_project(tmp_path / "a", {"model": {"task": "classification", "threshold": 1.5}})
    with pytest.raises(ConfigError, match=r"model.threshold is only for model.task: classification \(got 0.4\)"):
        make_project(tmp_path / "b", {"model": {"threshold": 0.4}})
    with pytest.raises(ConfigError, match=r"model.threshold and gate.threshold both set the decision threshold"):
        make_project(
            tmp_path / "c",
            {"model": {"task": "classification", "threshold": 0.4}, "gate": {"threshold": {"optimise": "f1"}}},
        )
    with pytest.raises(ConfigError, match=r"gate.prediction_range is the range of the `probability` column"):
        make_project(tmp_path / "d", {"model": {"task": "classification"}, "gate": {"thresholds": None}})
    p = _classification_project(tmp_path / "e", {"model": {"positive_label": "maybe"}})
    with pytest.raises(ConfigError, match=r"model.positive_label: 'maybe' is not one of the model's classes"):
        train(p)


def _features_frame(p: Any) -> Any:
    from loopline.tables import DeltaStore

    return DeltaStore(p.storage_root).read("features").to_pandas()


def test_training_on_integer_inputs_prints_no_mlflow_signature_hint(tmp_path: Path) -> None:
    """MLflow's "Inferred schema contains integer column(s)" hint is noise for loopline users (the server
    answers 400 on a null integer by design): training, and so every loop turn and replay window, stays quiet."""
    import warnings

    import pyarrow as pa

    p = make_project(tmp_path)
    store = DeltaStore(p.storage_root)
    t = store.read("features")
    store.overwrite("features", t.append_column("n", pa.array([i % 7 for i in range(t.num_rows)], pa.int64())))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(p)
    hints = [str(w.message)[:80] for w in caught if "integer column" in str(w.message)]
    assert hints == []


def test_registering_prints_nothing_on_the_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """MLflow's "Successfully registered model / Created version" lines go to the debug log, not the terminal
    (a replay printed them twice per window)."""
    p = make_project(tmp_path)
    capfd.readouterr()
    train(p)
    train(p)
    err = capfd.readouterr().err
    assert "registered model" not in err and "Created version" not in err, err
