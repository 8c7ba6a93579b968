"""Loading a served version: the tree ensemble is compiled with Treelite only when it matches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loopline.config import load_project
from loopline.serving.model import ModelError, load_version
from loopline.serving.protocols import Parsed
from loopline.treepredict import TreePredictor


def _parsed(n: int = 50) -> Parsed:
    rng = np.random.default_rng(5)
    cols = {"x": rng.uniform(0, 50, n), "n": rng.integers(0, 10, n), "flag": rng.integers(0, 2, n) == 1}
    return Parsed(cols, n)


def test_served_trees_are_compiled_and_match_the_estimator(project: Path) -> None:
    """The served version predicts through the runtime's Treelite path; with compile_trees off, through the
    estimator on the NumPy matrix; both as the model's own predict."""
    import pandas as pd

    p = load_project(project, "prod")
    compiled = load_version(p, "1")
    assert compiled.runtime.path == "matrix" and compiled.runtime.compiled and compiled.inline
    assert isinstance(compiled.runtime.estimator, TreePredictor)
    (project / "loopline.yaml").write_text(
        (project / "loopline.yaml").read_text().replace("serving:\n", "serving:\n  compile_trees: false\n")
    )
    plain = load_version(load_project(project, "prod"), "1")
    assert plain.runtime.path == "matrix" and not plain.runtime.compiled
    assert type(plain.runtime.estimator).__name__ == "HistGradientBoostingRegressor"
    parsed = _parsed()
    fast = compiled.predict(parsed)
    assert fast.labels.dtype == np.float64 and fast.proba is None and fast.probability is None
    assert np.allclose(fast.labels, plain.predict(parsed).labels, rtol=1e-9)
    own = compiled.runtime.pyfunc.predict(pd.DataFrame(parsed.columns))
    assert np.allclose(fast.labels, own, rtol=1e-9)


def test_a_broken_version_is_refused(project: Path) -> None:
    with pytest.raises(ModelError, match=r"version 3 failed its smoke test: .*this model is broken"):
        load_version(load_project(project, "prod"), "3")


def test_startup_heap_is_frozen_out_of_the_cyclic_collector() -> None:
    import gc

    from loopline.serving.app import _freeze_startup_heap

    try:
        _freeze_startup_heap()
        assert gc.get_freeze_count() > 10_000  # pytest, numpy, mlflow...: all of it out of full collections
    finally:
        gc.unfreeze()
