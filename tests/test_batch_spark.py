"""Batch predictions, spark engine: real pyspark in local mode against the local engine's output."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from loopline.errors import MissingDependency
from loopline.tables import DeltaStore
from test_batch import copy_project, train_classifier, trained_project


@pytest.mark.spark
@pytest.mark.slow
def test_spark_engine_matches_local_engine(java: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from loopline.batch import score

    project = copy_project(trained_project(tmp_path_factory), tmp_path / "proj")
    store = DeltaStore(project.storage_root)
    local = score(project, batch_id="local")
    seen: list[int] = []
    spark = score(project, batch_id="spark", engine="spark", progress=lambda done, total: seen.append(done))
    assert spark.engine == "spark" and spark.rows == local.rows == 300
    assert spark.input == "table 'features' (version 0)" and spark.model_version == local.model_version
    assert seen[-1] == 300

    t = store.read("predictions")
    a = t.filter(pa.compute.equal(t["_batch_id"], "local")).sort_by("id")
    b = t.filter(pa.compute.equal(t["_batch_id"], "spark")).sort_by("id")
    assert a.schema == b.schema  # the same table contract
    assert a["id"].to_pylist() == b["id"].to_pylist()
    np.testing.assert_allclose(b["prediction"].to_numpy(), a["prediction"].to_numpy(), rtol=1e-12)
    assert a["out_of_range"].to_pylist() == b["out_of_range"].to_pylist()
    assert set(b["run_id"].to_pylist()) == {local.run_id}

    again = score(project, batch_id="spark", engine="spark")  # rerun replaces the batch
    assert again.table_version == spark.table_version + 1
    assert store.read("predictions").num_rows == 600


@pytest.mark.spark
@pytest.mark.slow
def test_spark_engine_scores_classifiers_like_the_local_engine(java: str, tmp_path: Path) -> None:
    """Text labels and a text input column: the executors run loopline's runtime, probabilities included."""
    from loopline.batch import score

    project, _, _ = train_classifier(tmp_path, "str-multiclass")
    score(project, batch_id="local")
    score(project, batch_id="spark", engine="spark")
    t = DeltaStore(project.storage_root).read("predictions")
    a = t.filter(pa.compute.equal(t["_batch_id"], "local")).sort_by("id")
    b = t.filter(pa.compute.equal(t["_batch_id"], "spark")).sort_by("id")
    assert a.schema == b.schema and b.schema.field("prediction").type == pa.string()
    assert a["prediction"].to_pylist() == b["prediction"].to_pylist()
    np.testing.assert_allclose(b["probability"].to_numpy(), a["probability"].to_numpy(), rtol=1e-12)
    assert a["probabilities"].to_pylist() == b["probabilities"].to_pylist()


def test_spark_engine_without_pyspark_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from loopline.batch_spark import score_spark

    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(MissingDependency, match=r"pyspark is not installed\nHint: pip install \"loopline\[spark\]\""):
        score_spark(None)  # type: ignore[arg-type]
