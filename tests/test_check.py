"""`loopline check` catches what `run` would reject; every configuration error exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopline.check import check_project
from loopline.config import load_config
from loopline.errors import ConfigError


def _append(project_dir: Path, text: str) -> None:
    cfg = project_dir / "loopline.yaml"
    cfg.write_text(cfg.read_text() + text)


def test_check_validates_training_params(project_dir: Path) -> None:
    _append(
        project_dir,
        "training:\n  estimator: sklearn.ensemble.HistGradientBoostingRegressor\n"
        "  params: {max_iter: -5, max_itr: 100}\n",
    )
    _, problems = check_project(project_dir)
    text = "\n".join(problems)
    assert "training.params.max_iter must be an int in the range [1, inf), got -5" in text
    assert "training.params.max_itr is not a parameter of HistGradientBoostingRegressor" in text
    assert "max_iter" in text.split("max_itr is not a parameter")[1]  # the valid names are listed


def test_check_validates_params_of_every_environment(project_dir: Path) -> None:
    text = (
        (project_dir / "loopline.yaml")
        .read_text()
        .replace("  prod: {}", "  prod:\n    overrides: {training: {params: {learning_rate: -1.0}}}")
    )
    (project_dir / "loopline.yaml").write_text(text)
    _, problems = check_project(project_dir)
    assert any("[environment prod]: training.params.learning_rate must be" in p for p in problems), problems


def test_duplicate_yaml_keys_are_refused_with_key_and_line(project_dir: Path) -> None:
    _append(project_dir, "serving: {port: 8000}\nserving: {port: 9000}\n")
    lines = (project_dir / "loopline.yaml").read_text().splitlines()
    line = len(lines)  # the second `serving:`
    with pytest.raises(ConfigError, match=rf"loopline.yaml: duplicate key 'serving' at line {line}"):
        load_config(project_dir / "loopline.yaml")
    nested = project_dir / "nested.yaml"
    nested.write_text("project: a\nmodel:\n  name: m\n  target: y\n  name: n\n")
    with pytest.raises(ConfigError, match=r"nested.yaml: duplicate key 'model.name' at line 5 \(first at line 3\)"):
        load_config(nested)


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("serving: {port: -1}\n", ("tables",), "serving.port must be a number >= 1"),
        ("serving: {port: 1}\nserving: {port: 2}\n", ("status",), "duplicate key 'serving'"),
        ("training: {params: {max_itr: 3}}\n", ("run", "train"), "training.params.max_itr is not a parameter"),
        ("training: {params: {max_itr: 3}}\n", ("check",), "training.params.max_itr is not a parameter"),
        ("features: {hook: nopkg.feats:build}\n", ("ingest", "points"), "features.hook: cannot import module"),
        ("training: {estimator: sklearn.nope.Nope}\n", ("run", "train"), "training.estimator 'sklearn.nope.Nope'"),
        ("model: [\n", ("sql", "select 1"), "not valid YAML"),
    ],
)
def test_every_config_error_exits_2(project_dir: Path, cli, text: str, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    _append(project_dir, text)
    r = cli(*args, cwd=project_dir)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr.replace("\n", " ")
    assert "Traceback" not in r.stderr
