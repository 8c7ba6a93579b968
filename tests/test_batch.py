"""Batch predictions, local engine: real MLflow registry (sqlite), real Delta tables, the real CLI.

The training module is written elsewhere; here a small scikit-learn model is trained and registered
with MLflow directly (``register_model``), which is exactly what the registry holds in production.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from loopline.config import Project, load_project
from loopline.errors import BatchError, RegistryError
from loopline.labels import LabelSpec
from loopline.tables import DeltaStore

YAML = textwrap.dedent(
    """\
    project: demo
    model:
      name: demo
      target: y
      keys: [id]
    gate:
      prediction_range: [-50, 50]
    batch:
      batch_size: 64
    environments:
      dev: {}
    """
)
FEATURES = ["x1", "x2", "x3"]


def make_features(n: int = 300, seed: int = 0, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 3, size=(n, 3))
    y = 20 * x[:, 0] + 5 * x[:, 1] - 3 * x[:, 2] + rng.normal(0, 0.1, n)
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + n), pa.int64()),
            "x1": x[:, 0],
            "x2": x[:, 1],
            "x3": x[:, 2],
            "y": y,
            "_batch_id": pa.array(["f1"] * n),
        }
    )


def register_champion(project: Project, table: pa.Table) -> str:
    """Fit a LinearRegression on ``table``, log it with a signature, register it, alias it @champion."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    from loopline import tracking

    c = tracking.client(project)
    df = table.to_pandas()
    x, y = df[FEATURES], df["y"]
    model = LinearRegression().fit(x, y)
    with tracking.bound(project), mlflow.start_run(experiment_id=tracking.experiment_id(project)):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x, model.predict(x)),
            pip_requirements=["scikit-learn"],
            registered_model_name=project.registered_model,
        )
    version = str(info.registered_model_version)
    c.set_registered_model_alias(project.registered_model, "champion", version)
    return version


_BASE: list[Path] = []


def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a features table and a registered @champion, built once per test process.

    Creating the MLflow sqlite database and registering a model costs seconds, so the batch, spark
    and publish tests share this folder read-only and each test works on a copy (:func:`copy_project`).
    """
    if not _BASE:
        root = tmp_path_factory.mktemp("batchproj")
        (root / "loopline.yaml").write_text(YAML)
        project = load_project(root)
        table = make_features()
        DeltaStore(project.storage_root).append("features", table)
        register_champion(project, table)
        _BASE.append(root)
    return _BASE[0]


def copy_project(base: Path, dest: Path) -> Project:
    """A private copy of the trained project (its registry and tables), so tests do not interfere."""
    shutil.copytree(base, dest)
    return load_project(dest)


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Project:
    return copy_project(trained_project(tmp_path_factory), tmp_path / "proj")


def store(project: Project) -> DeltaStore:
    return DeltaStore(project.storage_root)


# ----------------------------------------------------------------------------- happy path
def test_predictions_follow_the_contract(project: Project) -> None:
    from loopline.batch import score

    seen: list[tuple[int, int | None]] = []
    result = score(project, progress=lambda done, total: seen.append((done, total)))
    assert result.batch_id == "features-v0"
    assert result.rows == 300 and result.engine == "local"
    assert result.model_name == "dev.demo" and result.model_version == "1" and result.run_id
    t = store(project).read("predictions")
    assert t.schema.names == [
        "id",
        "_input_batch_id",
        "prediction",
        "model_name",
        "model_version",
        "run_id",
        "scored_at",
        "_batch_id",
        "out_of_range",
    ]
    assert t.schema.field("id").type == pa.int64()
    assert t.schema.field("prediction").type == pa.float64()
    assert t.schema.field("scored_at").type == pa.timestamp("us", tz="UTC")
    assert t.schema.field("out_of_range").type == pa.bool_()
    assert set(t.column("_batch_id").to_pylist()) == {"features-v0"}
    assert set(t.column("_input_batch_id").to_pylist()) == {"f1"}  # the scored rows' own ingest batch
    assert set(t.column("model_version").to_pylist()) == {"1"}
    assert sorted(t.column("id").to_pylist()) == list(range(300))
    # progress saw bounded batches (batch_size 64) and the known total
    assert seen[0] == (64, 300) and seen[-1] == (300, 300) and len(seen) == 5
    # predictions are the model's own
    import mlflow.pyfunc

    from loopline import tracking

    with tracking.bound(project):  # MLflow's own loader, as a reference
        model = mlflow.pyfunc.load_model("models:/dev.demo@champion")
    feats = store(project).read("features").to_pandas().sort_values("id")
    expected = model.predict(feats[FEATURES])
    got = t.to_pandas().sort_values("id")["prediction"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_out_of_range_flag_uses_gate_range(project: Project) -> None:
    from loopline.batch import score

    result = score(project)
    t = store(project).read("predictions").to_pandas()
    expected = (t["prediction"] < -50) | (t["prediction"] > 50)
    assert expected.any() and (~expected).any()  # the fixture spans both sides of the range
    assert (t["out_of_range"] == expected).all()
    assert result.out_of_range == int(expected.sum())


def _with(project: Project, overlay: dict[str, dict[str, Any]]) -> Project:
    """The project with some config sections' fields replaced (no file written)."""
    cfg = project.config
    update = {section: getattr(cfg, section).model_copy(update=fields) for section, fields in overlay.items()}
    return Project(**{**project.__dict__, "config": cfg.model_copy(update=update)})


def _champion(spec: LabelSpec, version: str = "3") -> Any:
    """A Champion for the row builder alone (no model is called): name, version and the label contract."""
    from loopline.batch import Champion
    from loopline.runtime import ModelRuntime
    from loopline.serving.schema import Signature

    rt = ModelRuntime("m", version, "r", pyfunc=None, signature=Signature(()), spec=spec)
    return Champion(name="m", version=version, run_id="r", uri=f"models:/m/{version}", runtime=rt)


def test_nan_and_inf_predictions_are_out_of_range(project: Project) -> None:
    from loopline.batch import RowBuilder
    from loopline.labels import spec_for
    from loopline.runtime import Output

    builder = RowBuilder(project, _champion(spec_for("regression", "float")), "b", [pa.field("id", pa.int64())], 4)
    keys = pa.record_batch({"id": pa.array([1, 2, 3, 4], pa.int64())})
    rb = builder.build(keys, Output(np.array([0.0, np.nan, np.inf, 51.0])))
    assert rb.column("out_of_range").to_pylist() == [False, True, True, True]
    assert rb.column("model_version").to_pylist() == ["3"] * 4
    assert "probability" not in rb.schema.names


@pytest.mark.parametrize(
    ("kind", "classes", "labels"),
    [
        ("int", [0, 1], [1, 0, 1]),
        ("bool", [False, True], [True, False, True]),
        ("str", ["no", "yes"], ["yes", "no", "yes"]),
    ],
)
def test_classifier_rows_keep_the_label_type_and_probabilities(
    project: Project, kind: Any, classes: list[Any], labels: list[Any]
) -> None:
    from loopline.batch import RowBuilder
    from loopline.labels import arrow_type, spec_for
    from loopline.runtime import Output

    clf = _with(project, {"model": {"task": "classification"}, "gate": {"prediction_range": [0.1, 0.9]}})
    builder = RowBuilder(
        clf, _champion(spec_for("classification", kind, classes)), "b", [pa.field("id", pa.int64())], 2
    )
    proba = np.array([[0.2, 0.8], [0.95, 0.05], [0.4, 0.6]])
    preds = np.array(labels, dtype=object if kind == "str" else None)
    rb = builder.build(pa.record_batch({"id": pa.array([1, 2, 3], pa.int64())}), Output(preds, proba))
    assert rb.schema.field("prediction").type == arrow_type(kind)
    assert rb.column("prediction").to_pylist() == labels  # no text round trip
    assert rb.column("probability").to_pylist() == [0.8, 0.05, 0.6]  # P(positive class)
    assert rb.column("probabilities").to_pylist()[0] == [(classes[0], 0.2), (classes[1], 0.8)]
    assert rb.column("out_of_range").to_pylist() == [False, True, False]  # probability outside [0.1, 0.9]


def test_multiclass_rows_give_the_probability_of_the_predicted_label(project: Project) -> None:
    from loopline.batch import RowBuilder
    from loopline.labels import spec_for
    from loopline.runtime import Output

    clf = _with(project, {"model": {"task": "classification"}, "gate": {"prediction_range": None}})
    spec = spec_for("classification", "str", ["clear", "cloudy/misty", "light rain/snow"])
    builder = RowBuilder(clf, _champion(spec), "b", [pa.field("id", pa.int64())], 2)
    out = Output(np.array(["cloudy/misty", "clear"], dtype=object), np.array([[0.2, 0.7, 0.1], [0.5, 0.3, 0.2]]))
    rb = builder.build(pa.record_batch({"id": pa.array([1, 2], pa.int64())}), out)
    assert rb.column("probability").to_pylist() == [0.7, 0.5]
    assert dict(rb.column("probabilities").to_pylist()[0])["light rain/snow"] == 0.1
    # no probabilities (a model without predict_proba): null columns, same schema
    rb = builder.build(pa.record_batch({"id": pa.array([1], pa.int64())}), Output(np.array(["clear"], dtype=object)))
    assert rb.column("probability").to_pylist() == [None] and rb.column("out_of_range").to_pylist() == [False]


def test_rerun_same_batch_id_replaces_without_duplicates(project: Project) -> None:
    from loopline.batch import score

    s = store(project)
    first = score(project, batch_id="april")
    v1 = s.version("predictions")
    second = score(project, batch_id="april")
    assert second.table_version == v1 + 1  # exactly one more commit
    t = s.read("predictions")
    assert t.num_rows == 300 == first.rows == second.rows
    assert len(set(t.column("id").to_pylist())) == 300
    other = score(project, batch_id="may")  # another batch id is kept beside it
    assert s.read("predictions").num_rows == 600 and other.table_version == v1 + 2


def test_fast_path_is_identical_to_pyfunc(project: Project) -> None:
    from loopline.batch import score

    score(project, batch_id="fast")
    score(project, batch_id="pyfunc", fast=False)
    t = store(project).read("predictions").to_pandas()
    a = t[t["_batch_id"] == "fast"].sort_values("id")["prediction"].to_numpy()
    b = t[t["_batch_id"] == "pyfunc"].sort_values("id")["prediction"].to_numpy()
    assert np.array_equal(a, b)


def test_query_input_and_its_default_batch_id(project: Project, tmp_path: Path) -> None:
    from loopline.batch import score

    cfg = project.config.model_copy(
        update={
            "batch": project.config.batch.model_copy(
                update={"query": "SELECT id, x1, x2, x3 FROM features WHERE id < 100"}
            )
        }
    )
    q = Project(**{**project.__dict__, "config": cfg})
    result = score(q)
    assert result.batch_id.startswith("query-") and result.rows == 100 and result.input_version is None
    assert score(q).batch_id == result.batch_id  # same query, same data -> same batch (replaced)
    assert store(project).read("predictions").num_rows == 100


def test_input_batch_scores_only_those_rows(project: Project) -> None:
    from loopline.batch import score

    s = store(project)
    s.append("features", make_features(n=40, seed=1, start=1000).set_column(5, "_batch_id", pa.array(["f2"] * 40)))
    result = score(project, input_batch="f2")
    assert result.batch_id == "features-f2" and result.rows == 40
    assert sorted(s.read("predictions").column("id").to_pylist()) == list(range(1000, 1040))
    with pytest.raises(BatchError, match=r"_batch_id 'nope'\) has no rows to score"):
        score(project, input_batch="nope")


# ----------------------------------------------------------------------------- bad input
def _with_features(project: Project, table: pa.Table) -> None:
    store(project).overwrite("features", table)


def test_missing_input_column_names_it_and_writes_nothing(project: Project) -> None:
    from loopline.batch import score

    _with_features(project, make_features().drop_columns(["x2"]))
    with pytest.raises(
        BatchError,
        match=r"table 'features' \(version 1\) is missing the model input column\(s\) "
        r"\['x2'\]",
    ):
        score(project)
    assert not store(project).exists("predictions")


def test_missing_key_column(project: Project) -> None:
    from loopline.batch import score

    _with_features(project, make_features().drop_columns(["id"]))
    with pytest.raises(BatchError, match=r"has no key column 'id' \(model.keys\)"):
        score(project)


def test_type_the_signature_cannot_take(project: Project) -> None:
    from loopline.batch import score

    t = make_features()
    t = t.set_column(t.schema.get_field_index("x3"), "x3", pa.array([str(v) for v in t.column("x3").to_pylist()]))
    _with_features(project, t)
    with pytest.raises(
        BatchError,
        match=r"column 'x3' of table 'features' \(version 1\) is string, "
        r"but the model's signature needs double",
    ):
        score(project)
    assert not store(project).exists("predictions")


def test_empty_input_writes_nothing(project: Project) -> None:
    from loopline.batch import score

    score(project, batch_id="kept")
    before = store(project).version("predictions")
    _with_features(project, make_features().slice(0, 0))
    with pytest.raises(BatchError, match=r"table 'features' \(version 1\) has no rows to score"):
        score(project, batch_id="kept")
    assert store(project).version("predictions") == before
    assert store(project).read("predictions").num_rows == 300


def test_failure_mid_stream_leaves_the_previous_version(project: Project) -> None:
    """A model that breaks on the 3rd record batch: no commit, the earlier batch rows are intact."""
    from loopline import batch

    batch.score(project, batch_id="b")
    before = store(project).version("predictions")
    calls = {"n": 0}
    original = batch.Predictor.__call__

    def flaky(self: batch.Predictor, rb: pa.RecordBatch) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise BatchError("model exploded on batch 3")
        return original(self, rb)

    batch.Predictor.__call__ = flaky  # type: ignore[method-assign]
    try:
        with pytest.raises(BatchError, match="model exploded on batch 3"):
            batch.score(project, batch_id="b")
    finally:
        batch.Predictor.__call__ = original  # type: ignore[method-assign]
    assert store(project).version("predictions") == before
    assert store(project).read("predictions").num_rows == 300


def test_no_champion_names_the_model(project: Project) -> None:
    from loopline import tracking
    from loopline.batch import score

    tracking.client(project).delete_registered_model_alias(project.registered_model, "champion")
    with pytest.raises(RegistryError, match=r"registered model 'dev.demo' has no @champion"):
        score(project)
    assert not store(project).exists("predictions")


def test_query_that_writes_is_refused(project: Project) -> None:
    from loopline.batch import score

    cfg = project.config.model_copy(
        update={"batch": project.config.batch.model_copy(update={"query": "DELETE FROM features"})}
    )
    with pytest.raises(BatchError, match=r"batch.query failed: only read-only queries are allowed"):
        score(Project(**{**project.__dict__, "config": cfg}))
    assert not store(project).exists("predictions")


def test_missing_input_table(project: Project) -> None:
    from loopline.batch import score

    cfg = project.config.model_copy(update={"batch": project.config.batch.model_copy(update={"input": "nope"})})
    with pytest.raises(BatchError, match=r"table 'nope' does not exist"):
        score(Project(**{**project.__dict__, "config": cfg}))


# ----------------------------------------------------------------------------- CLI
def test_cli_run_batch_and_errors(project: Project) -> None:
    from _support import run_cli

    ok = run_cli("run", "batch", "--project", str(project.root), "--batch-id", "cli-1")
    assert ok.returncode == 0, ok.stderr
    assert "300 rows" in ok.stdout and "cli-1" in ok.stdout
    assert store(project).read("predictions").num_rows == 300

    bad = run_cli("run", "batch", "--project", str(project.root), "--engine", "gpu")
    assert bad.returncode == 2 and "gpu" in bad.stderr

    from loopline import tracking

    tracking.client(project).delete_registered_model_alias(project.registered_model, "champion")
    none = run_cli("run", "batch", "--project", str(project.root))
    assert none.returncode == 1
    assert "has no @champion" in none.stderr and "Hint:" in none.stderr


CLASSIFIERS = {
    # label type -> (labels from the score, estimator params); "color" is a text input encoded inside the model
    "str-multiclass": (lambda s: np.where(s < 3, "low", np.where(s < 7, "mid/range", "high")), {}),
    "bool": (lambda s: s > 5, {}),
    "int": (lambda s: (s > 5).astype(np.int64), {}),
}


def train_classifier(root: Path, case: str) -> tuple[Project, pa.Table, str]:
    """A promoted loopline-trained classifier of the case's label type with a text input column ``color``."""
    from _lifecycle import features_table, make_project
    from loopline import registry
    from loopline.training import train

    label_of, params = CLASSIFIERS[case]
    p = make_project(
        root,
        {
            "model": {"task": "classification", "target": "label"},
            "training": {"estimator": None, "params": {"max_iter": 20, **params}},
            "gate": None,
        },
    )
    t = features_table(n=600)
    color = np.random.default_rng(1).choice(["red", "green", "blue"], t.num_rows)
    label = label_of(10 * t.column("x1").to_numpy() + (color == "red") * 3.0)
    t = t.drop(["y"]).append_column("color", pa.array(color)).append_column("label", pa.array(label.tolist()))
    DeltaStore(p.storage_root).overwrite("features", t)
    r = train(p)
    assert r.gate.passed, r.gate.failed_rules
    registry.promote(p, r.version, reason="test")
    return p, t, r.version


@pytest.mark.parametrize("case", sorted(CLASSIFIERS))
def test_classifier_batch_scores_typed_labels_and_probabilities(tmp_path: Path, case: str) -> None:
    """Train with loopline (a text input column, labels of each type), promote, batch-score: the table holds
    the labels in their own type and the probabilities the registered model gives (predict_proba)."""
    from loopline import tracking
    from loopline.batch import score
    from loopline.context import context

    p, t, version = train_classifier(tmp_path, case)
    result = score(p, batch_id="all")
    got = store(p).read("predictions").to_pandas().sort_values("id").reset_index(drop=True)
    assert result.rows == 600
    raw_model = tracking.load_model(f"models:/dev.demo/{version}", context(p)).get_raw_model()
    X = t.to_pandas().sort_values("id")[["x1", "x2", "x3", "color"]]
    assert got["prediction"].tolist() == raw_model.predict(X).tolist()  # typed: no text round trip
    proba = raw_model.predict_proba(X)
    classes = list(raw_model.classes_)
    if len(classes) == 2:
        np.testing.assert_allclose(got["probability"].to_numpy(), proba[:, 1], rtol=1e-12)
    else:
        picked = [proba[i, classes.index(lab)] for i, lab in enumerate(got["prediction"])]
        np.testing.assert_allclose(got["probability"].to_numpy(), picked, rtol=1e-12)
    first = dict(got["probabilities"][0])
    assert list(first) == classes and np.allclose(list(first.values()), proba[0])


# ----------------------------------------------------------------------------- mixed inputs on the fast path
def register_mixed_champion(project: Project, encoder: str = "ordinal") -> pa.Table:
    """A features table with float, int64 and text (with nulls) inputs, and @champion: the categorical-input
    pipeline ``loopline run train`` logs (estimators.build) around a HistGradientBoostingRegressor."""
    import mlflow
    import mlflow.sklearn
    import skops.io
    from mlflow.models import infer_signature
    from sklearn.ensemble import HistGradientBoostingRegressor

    from loopline import tracking
    from loopline.estimators import build

    rng = np.random.default_rng(3)
    n = 2_000
    color = rng.choice(["red", "green", "blue", "teal"], n).astype(object)
    color[rng.random(n) < 0.05] = None
    count = rng.integers(-5, 20, n)
    x1 = rng.normal(size=n)
    y = 3 * x1 + count * 0.5 + (color == "red") * 4.0 + rng.normal(0, 0.1, n)
    table = pa.table({"id": np.arange(n), "x1": x1, "count": count, "color": pa.array(color, pa.string()), "y": y})
    train = table.slice(0, 1_500).to_pandas()
    train = train[train["color"] != "teal"]  # teal is unseen by the model: scored as missing
    cols = ["x1", "count", "color"]
    if encoder == "ordinal":
        est = build(HistGradientBoostingRegressor, {"max_iter": 30}, ["color"], cols)
    else:  # an encoder the matrix plan does not take (unknown categories raise): the model's own path
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OrdinalEncoder

        encode = ColumnTransformer([("c", OrdinalEncoder(), ["color"]), ("n", "passthrough", ["x1", "count"])])
        est = Pipeline([("encode", encode), ("model", HistGradientBoostingRegressor(max_iter=30))])
        table = table.filter(pa.compute.is_in(table.column("color"), pa.array(["red", "green", "blue"])))
        train = train.dropna()
    est.fit(train[cols], train["y"])
    with tracking.bound(project), mlflow.start_run(experiment_id=tracking.experiment_id(project)):
        info = mlflow.sklearn.log_model(
            est,
            name="model",
            signature=infer_signature(train[cols], est.predict(train[cols])),
            pip_requirements=["scikit-learn"],
            registered_model_name=project.registered_model,
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(est)),  # our own model
        )
    tracking.client(project).set_registered_model_alias(
        project.registered_model, "champion", str(info.registered_model_version)
    )
    DeltaStore(project.storage_root).overwrite("features", table)
    return table


def test_int_and_text_inputs_take_the_fast_path_and_agree_with_pyfunc(project: Project) -> None:
    """A model with int64 and text inputs (nulls, a category it never saw) predicts on the matrix path,
    threaded, and writes exactly the pyfunc path's (and the pipeline's own) predictions."""
    from loopline.batch import load_champion, score

    table = register_mixed_champion(project)
    champion = load_champion(project)
    assert champion.runtime.path == "matrix" and champion.runtime.encoder is not None
    score(project, batch_id="fast")
    score(project, batch_id="pyfunc", fast=False)
    t = store(project).read("predictions").to_pandas()
    fast = t[t["_batch_id"] == "fast"].sort_values("id")["prediction"].to_numpy()
    slow = t[t["_batch_id"] == "pyfunc"].sort_values("id")["prediction"].to_numpy()
    assert len(fast) == table.num_rows and np.array_equal(fast, slow)
    raw = champion.runtime.pyfunc.get_raw_model()
    own = raw.predict(table.to_pandas()[["x1", "count", "color"]])
    assert np.array_equal(fast, own)


def test_pipeline_with_another_encoder_keeps_its_own_path(project: Project) -> None:
    from loopline.batch import load_champion, score

    table = register_mixed_champion(project, encoder="strict")
    champion = load_champion(project)
    assert champion.runtime.path != "matrix" and champion.runtime.encoder is None
    score(project, batch_id="b")
    got = store(project).read("predictions").to_pandas().sort_values("id")["prediction"].to_numpy()
    raw = champion.runtime.pyfunc.get_raw_model()
    assert np.array_equal(got, raw.predict(table.to_pandas()[["x1", "count", "color"]]))
