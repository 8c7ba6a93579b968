from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from loopline.config import load_config, load_project, parse_duration
from loopline.errors import ConfigError

BASE = """\
project: shop
model: {name: churn, target: y, keys: [id]}
environments:
  dev: {}
  prod:
    storage_root: ${PROD_ROOT:-/tmp/prod-tables}
    tracking_uri: ${PROD_TRACKING}
    overrides:
      training: {params: {max_iter: 500}}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "loopline.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_defaults_per_environment(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    p = load_project(tmp_path, "dev")
    assert p.env == "dev"
    assert p.registered_model == "dev.churn"
    assert p.storage_root == str(tmp_path / ".loopline" / "dev" / "tables")
    assert p.tracking_uri == f"sqlite:///{tmp_path / '.loopline' / 'dev' / 'mlflow.db'}"
    assert p.artifact_root == (tmp_path / ".loopline" / "dev" / "artifacts").as_uri()
    assert p.config.training.params == {}


def test_environment_overlay_and_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, BASE)
    monkeypatch.setenv("PROD_TRACKING", "postgresql://u@db/mlflow")
    p = load_project(tmp_path, "prod")
    assert p.tracking_uri == "postgresql://u@db/mlflow"
    assert p.storage_root == "/tmp/prod-tables"
    assert p.registered_model == "prod.churn"
    assert p.config.training.params == {"max_iter": 500}
    monkeypatch.setenv("PROD_ROOT", "s3://bucket/tables")
    assert load_project(tmp_path, "prod").storage_root == "s3://bucket/tables"


def test_unset_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, BASE)
    monkeypatch.delenv("PROD_TRACKING", raising=False)
    with pytest.raises(
        ConfigError,
        match=r"loopline.yaml: environments.prod.tracking_uri uses \$\{PROD_TRACKING\}, but the environment "
        r"variable PROD_TRACKING is not set",
    ):
        load_project(tmp_path, "prod")


def test_unknown_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROD_TRACKING", "x")
    write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"environment 'qa' is not defined under `environments`"):
        load_project(tmp_path, "qa")


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("contract: {max_failure_rate: 2}", r"loopline.yaml: contract.max_failure_rate must be a number <= 1.0, got 2"),
        ("contract: {row_count: {min: -3}}", r"contract.row_count.min must be a number >= 0, got -3"),
        ("training: {split: {valid: 0.6, test: 0.5}}", r"training.split must be valid \+ test < 1"),
        ("training: {search: {n_trials: zero, space: {}}}", r"training.search.n_trials must be an integer, got 'zero'"),
        ("serving: {port: 70000}", r"serving.port must be a number <= 65535, got 70000"),
        ("monitoring: {window: soon}", r"monitoring.window must be a duration like 90d, 12h, 30m or 45s, got 'soon'"),
        ("features: {hook: not-a-hook}", r"features.hook must be a `package.module:function` reference"),
        ("batch: {engine: dask}", r"batch.engine must be one of 'local' or 'spark', got 'dask'"),
        ("contract: {columns: {x: {regex: '('}}}", r"contract.columns.x must be a valid regular expression"),
        ("gate: {prediction_range: [5, 1]}", r"gate must be prediction_range as \[min, max\] with min <= max"),
        (
            "schedules: {train: 'every day'}",
            r"schedules.train must be a cron expression like '0 3 \* \* \*' \(minute hour day month weekday\), "
            r"got 'every day'",
        ),
        ("trainig: {}", r"trainig is not a known key"),
        ("sources: {s: {kind: csv}}", r"sources.s must be a `path` \(kind csv needs one\)"),
    ],
)
def test_errors_name_file_key_value(tmp_path: Path, snippet: str, message: str) -> None:
    write(tmp_path, "project: shop\nmodel: {name: churn, target: y}\n" + snippet + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "loopline.yaml")


def test_all_problems_listed_at_once(tmp_path: Path) -> None:
    write(tmp_path, "project: shop\nmodel: {name: churn}\nserving: {port: 0, workers: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "loopline.yaml")
    text = str(info.value)
    assert "model.target is required" in text
    assert "serving.port must be a number >= 1, got 0" in text
    assert "serving.workers must be a number >= 1, got 0" in text


def test_bad_yaml_and_missing_file(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    write(tmp_path, "project: [unclosed\n")
    with pytest.raises(ConfigError, match=r"loopline.yaml: not valid YAML at line 2"):
        load_config(tmp_path / "loopline.yaml")
    with pytest.raises(ConfigError, match=r"project folder .*nowhere does not exist"):
        load_project(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"no loopline.yaml in .* or any parent folder"):
        load_project(tmp_path_factory.mktemp("empty"))


def test_overlay_errors_name_environment(tmp_path: Path) -> None:
    write(tmp_path, BASE.replace("max_iter: 500", "max_iter: 500}, split: {test: 3"))
    with pytest.raises(
        ConfigError, match=r"loopline.yaml \[environment prod\]: training.split.test must be a number < 1"
    ):
        load_config(tmp_path / "loopline.yaml", "prod", environ={"PROD_TRACKING": "x"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        (45, timedelta(seconds=45)),
    ],
)
def test_durations(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_model_input_columns(tmp_path: Path) -> None:
    write(tmp_path, "project: p\nmodel: {name: m, target: y, keys: [id], time_column: ts}\n")
    cfg, _ = load_config(tmp_path / "loopline.yaml")
    assert cfg.model.input_columns(["id", "ts", "a", "_batch_id", "y", "b"]) == ["a", "b"]
