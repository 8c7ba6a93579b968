"""`loopline init`: the generated project validates, lints, and its own tests pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loopline.config import load_project
from loopline.errors import LooplineError, ScaffoldError
from loopline.hooks import load_hook
from loopline.scaffold import check_name, init_project, package_name, render

VENV_BIN = Path(sys.executable).parent
EXPECTED = {
    "loopline.yaml", "pyproject.toml", "README.md", "Dockerfile", ".dockerignore", ".gitignore",
    ".github/workflows/loopline.yml", "data/sample.csv", "tests/test_features.py", "tests/test_train.py",
    "churn_model/__init__.py", "churn_model/features.py", "churn_model/train.py",
}  # fmt: skip
WIDE = {"COLUMNS": "400"}  # no line wrapping in rich output


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("init") / "churn-model"
    init_project(root)
    return root


def _no_loopline_env() -> dict[str, str]:
    drop = {"MLFLOW_TRACKING_URI", "LOOPLINE_STORAGE_ROOT", "LOOPLINE_ENV", "LOOPLINE_PROJECT"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST_")}


def test_writes_every_file_with_names_substituted(generated: Path) -> None:
    files = {p.relative_to(generated).as_posix() for p in generated.rglob("*") if p.is_file()}
    assert files == EXPECTED
    for rel in files - {"data/sample.csv"}:
        text = (generated / rel).read_text()
        assert "{{name}}" not in text and "{{package}}" not in text and "{{loopline_version}}" not in text, rel
    assert "from churn_model.features import" in (generated / "tests/test_features.py").read_text()


def test_sample_csv_is_small_deterministic_regression_data(generated: Path, tmp_path: Path) -> None:
    lines = (generated / "data/sample.csv").read_text().splitlines()
    assert lines[0] == "id,ts,x1,x2,segment,y"
    assert len(lines) == 201
    again = init_project(tmp_path / "again").root
    assert (again / "data/sample.csv").read_bytes() == (generated / "data/sample.csv").read_bytes()


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_config_validates_in_every_environment(generated: Path, env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LOOPLINE_STORAGE_ROOT", raising=False)
    project = load_project(generated, env)
    cfg = project.config
    assert project.env == env
    assert project.registered_model == f"{env}.churn-model"
    assert project.tracking_uri == f"sqlite:///{generated / '.loopline' / env / 'mlflow.db'}"
    assert cfg.project == "churn-model" and cfg.model.name == "churn-model"
    assert cfg.features.hook == "churn_model.features:build"
    assert cfg.training.estimator is not None and cfg.training.hook is None
    assert project.resolve_path(cfg.sources["sample"].path or "") == str(generated / "data" / "sample.csv")
    assert cfg.retention["raw"].days == 90
    assert (cfg.serving.auth.tokens_env == "LOOPLINE_TOKENS") is (env == "prod")
    assert cfg.training.params["max_iter"] == (50 if env == "dev" else 200)


def test_prod_takes_shared_infrastructure_from_the_environment(
    generated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow@db/mlflow")
    monkeypatch.setenv("LOOPLINE_STORAGE_ROOT", "s3://bucket/churn/prod")
    project = load_project(generated, "prod")
    assert project.tracking_uri == "postgresql://mlflow@db/mlflow"
    assert project.storage_root == "s3://bucket/churn/prod"


def test_every_config_section_is_present_and_commented(generated: Path) -> None:
    text = (generated / "loopline.yaml").read_text()
    data = yaml.safe_load(text)
    sections = [
        "project",
        "model",
        "sources",
        "contract",
        "features",
        "training",
        "gate",
        "batch",
        "serving",
        "monitoring",
        "retraining",
        "schedules",
        "retention",
        "environments",
    ]
    assert list(data) == sections
    assert {"log", "auth"} <= set(data["serving"])
    assert list(data["environments"]) == ["dev", "staging", "prod"]
    assert text.count("\n#") >= len(sections)
    assert "churn_model.train:train" in text  # the training hook, shown in a comment


def test_hooks_load_and_build_features_the_model_can_use(generated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    monkeypatch.setattr(sys, "path", [*sys.path])  # load_hook adds the project folder; undo it afterwards
    project = load_project(generated, "dev")
    build = load_hook(project.config.features.hook or "", "features.hook", project.root)
    train = load_hook("churn_model.train:train", "training.hook", project.root)
    df = build(pd.read_csv(generated / "data/sample.csv"))
    cols = project.config.model.input_columns(list(df.columns))
    assert all(pd.api.types.is_float_dtype(df[c]) for c in cols)
    model = train(df.iloc[:150], df.iloc[150:], {"alphas": [1.0]})
    assert model.predict(df[cols]).shape == (200,)
    for mod in [m for m in sys.modules if m == "churn_model" or m.startswith("churn_model.")]:
        del sys.modules[mod]


def test_actionlint_accepts_the_workflow(generated: Path) -> None:
    workflow = generated / ".github/workflows/loopline.yml"
    proc = subprocess.run([str(VENV_BIN / "actionlint"), str(workflow)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_deploys_code_not_models(generated: Path) -> None:
    text = (generated / ".github/workflows/loopline.yml").read_text()
    wf = yaml.safe_load(text)
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    assert "pull_request" in triggers and triggers["push"]["branches"] == ["main", "release/*"]
    jobs = wf["jobs"]
    assert set(jobs) == {"test", "staging", "prod"}
    runs = {name: [s.get("run", "") for s in job["steps"]] for name, job in jobs.items()}
    assert "python -m pytest" in runs["test"]
    assert runs["staging"][-2:] == ["loopline run ingest --env staging", "loopline run train --env staging"]
    assert runs["prod"][-3:] == [
        "loopline run ingest --env prod",
        "loopline run train --env prod",
        "loopline promote --env prod",
    ]
    assert "refs/heads/main" in jobs["staging"]["if"] and "refs/heads/release/" in jobs["prod"]["if"]
    uses = {s["uses"] for job in jobs.values() for s in job["steps"] if "uses" in s}
    assert uses == {"actions/checkout@v4", "actions/setup-python@v5"}
    assert "${{ secrets.MLFLOW_TRACKING_URI }}" in text


def test_dockerfile_runs_the_server_as_non_root(generated: Path) -> None:
    text = (generated / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "loopline serve --env prod --host 0.0.0.0 --port 8080 --workers ${WORKERS}" in text
    assert "EXPOSE 8080" in text and "HEALTHCHECK" in text and "/health" in text
    assert "USER loopline" in text and 'pip install "${LOOPLINE_SPEC}" .' in text
    assert ".loopline/" in (generated / ".gitignore").read_text().splitlines()
    assert ".loopline/" in (generated / ".dockerignore").read_text().splitlines()


def test_generated_projects_own_tests_pass(generated: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=generated, capture_output=True, text=True, timeout=120, env=_no_loopline_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout


def test_non_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match=rf"folder {tmp_path} is not empty\nHint: .*--force"):
        init_project(tmp_path, "demo")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_force_writes_over_a_non_empty_folder_and_keeps_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "README.md").write_text("old")
    result = init_project(tmp_path, "demo", force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "README.md").read_text().startswith("# demo")
    assert result.package == "demo" and (tmp_path / "demo" / "features.py").is_file()


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "x"
    target.write_text("")
    with pytest.raises(ScaffoldError, match=rf"{target} exists and is not a folder"):
        init_project(target, "demo")


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("my project", r"project name 'my project' is not valid: it must start with a letter.*\nHint: .*--name"),
        ("1st", r"project name '1st' is not valid"),
        ("demo-", r"project name 'demo-' is not valid"),
        ("class", r"project name 'class' gives the package name 'class', which would shadow a Python keyword"),
        ("Json", r"package name 'json', which would shadow .*standard-library"),
        ("Data", r"package name 'data', which would shadow"),
    ],
)
def test_bad_names_are_refused(tmp_path: Path, name: str, match: str) -> None:
    with pytest.raises(ScaffoldError, match=match):
        init_project(tmp_path / "p", name)
    assert not (tmp_path / "p").exists()


def test_the_folder_name_must_be_a_valid_name_without_name(tmp_path: Path) -> None:
    with pytest.raises(LooplineError, match=r"project name 'my proj' is not valid.*\nHint: pass a name"):
        init_project(tmp_path / "my proj")


@pytest.mark.parametrize(
    ("name", "package"),
    [("churn-model", "churn_model"), ("BikeShare.v2", "bike_share_v2"), ("demo", "demo"), ("A_b-C", "a_b_c")],
)
def test_package_name_is_snake_case(name: str, package: str) -> None:
    assert package_name(name) == package
    assert check_name(name) == package


def test_render_leaves_github_expressions_alone() -> None:
    out = render("{{name}} ${{ secrets.X }} {{ name }} {{package}}", {"name": "a", "package": "b"})
    assert out == "a ${{ secrets.X }} {{ name }} b"


def test_cli_init_creates_a_project(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    proc = cli("init", str(tmp_path / "proj"), "--name", "Fraud-Score", env=WIDE)
    assert proc.returncode == 0, proc.stderr
    assert "Created project Fraud-Score" in proc.stdout
    assert (tmp_path / "proj" / "fraud_score" / "train.py").is_file()
    assert load_project(tmp_path / "proj", "prod").registered_model == "prod.Fraud-Score"


def test_cli_init_refuses_a_non_empty_folder_and_a_bad_name(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "keep.txt").write_text("")
    proc = cli("init", str(tmp_path), env=WIDE)
    assert proc.returncode == 1
    assert "is not empty" in proc.stderr and "--force" in proc.stderr
    proc = cli("init", str(tmp_path / "new"), "--name", "bad name", env=WIDE)
    assert proc.returncode == 1
    assert "project name 'bad name' is not valid" in proc.stderr
    assert not (tmp_path / "new").exists()
    assert cli("init", str(tmp_path), "--force").returncode == 0
