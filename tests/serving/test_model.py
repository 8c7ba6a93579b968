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
    p = load_project(project, "prod")
    compiled = load_version(p, "1")
    assert isinstance(compiled.raw, TreePredictor)
    (project / "loopline.yaml").write_text(
        (project / "loopline.yaml").read_text().replace("serving:\n", "serving:\n  compile_trees: false\n")
    )
    plain = load_version(load_project(project, "prod"), "1")
    assert type(plain.raw).__name__ == "HistGradientBoostingRegressor"
    parsed = _parsed()
    assert np.allclose(compiled.predict(parsed), plain.predict(parsed), rtol=1e-9)
    assert np.allclose(compiled.predict(parsed), compiled.predict_pyfunc(parsed), rtol=1e-9)


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
