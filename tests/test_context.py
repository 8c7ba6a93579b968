"""loopline never changes the caller's MLflow URIs, and two environments in one process do not mix.

A notebook user has their own tracking and registry URIs; calling a stage from Python must leave them as they
were (the old ``tracking.client`` pointed MLflow's process-global URIs at loopline's database for good).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from _lifecycle import make_project, one_thread  # noqa: F401  (fixture, used by pytestmark)
from loopline import registry, tracking
from loopline.config import Project
from loopline.training import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def user_uris(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The caller's own MLflow URIs, set the way a notebook sets them; the process's URIs restored after."""
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as track_utils

    saved = (track_utils._tracking_uri, reg_utils._registry_uri)
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    tracking_uri = (tmp_path / "user-mlruns").as_uri()
    registry_uri = f"sqlite:///{tmp_path / 'user-registry.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    yield tracking_uri, registry_uri
    track_utils._tracking_uri, reg_utils._registry_uri = saved
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _globals() -> tuple[str, str, str | None, str | None]:
    import mlflow

    env = os.environ.get
    return mlflow.get_tracking_uri(), mlflow.get_registry_uri(), env("MLFLOW_TRACKING_URI"), env("MLFLOW_REGISTRY_URI")


def test_stages_called_from_python_leave_the_callers_mlflow_uris(tmp_path: Path, user_uris: tuple[str, str]) -> None:
    from loopline.batch import load_champion, score
    from loopline.serving.model import load_version

    before = _globals()
    assert before[:2] == user_uris
    p = make_project(tmp_path / "proj")
    result = train(p)
    assert _globals() == before
    registry.promote(p)
    assert _globals() == before
    scored = score(p)
    assert scored.rows == 400 and scored.model_version == result.version
    assert _globals() == before
    champ = load_champion(p)
    loaded = load_version(p, result.version)
    assert champ.version == loaded.runtime.version == "1"
    assert _globals() == before
    assert not (tmp_path / "user-mlruns").exists()  # nothing of loopline's was logged to the caller's store
    assert not (tmp_path / "user-registry.db").exists()


def test_bound_restores_the_callers_uris_even_on_error(tmp_path: Path, user_uris: tuple[str, str]) -> None:
    import mlflow

    p = make_project(tmp_path / "proj")
    before = _globals()
    with pytest.raises(RuntimeError, match="inside"), tracking.bound(p):
        assert mlflow.get_tracking_uri() == tracking.db_uri(p.tracking_uri)
        assert mlflow.get_registry_uri() == tracking.db_uri(p.registry_uri)
        raise RuntimeError("inside")
    assert _globals() == before


def test_bound_without_caller_uris_leaves_none_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller who never set a URI (MLflow's default, maybe from the environment) keeps exactly that."""
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as track_utils

    monkeypatch.setattr(track_utils, "_tracking_uri", None)
    monkeypatch.setattr(reg_utils, "_registry_uri", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:////nowhere/env-registry.db")
    p = make_project(tmp_path / "proj")
    with tracking.bound(p):
        pass
    assert track_utils._tracking_uri is None and reg_utils._registry_uri is None
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert os.environ["MLFLOW_REGISTRY_URI"] == "sqlite:////nowhere/env-registry.db"


def _two(tmp_path: Path) -> tuple[Project, Project]:
    a = make_project(tmp_path / "a")
    b = make_project(tmp_path / "b", {"model": {"name": "other"}, "training": {"params": {"max_iter": 30}}})
    return a, b


def test_two_projects_used_alternately_in_one_process_do_not_mix(tmp_path: Path, user_uris: tuple[str, str]) -> None:
    from loopline.batch import load_champion

    a, b = _two(tmp_path)
    assert a.tracking_uri != b.tracking_uri
    before = _globals()
    ra1 = train(a)
    rb1 = train(b)
    registry.promote(a)
    ra2 = train(a, params_override={"max_iter": 40})
    registry.promote(b)
    assert (ra1.version, rb1.version, ra2.version) == ("1", "1", "2")
    ca, cb = tracking.client(a), tracking.client(b)
    assert [m.name for m in ca.search_registered_models()] == ["dev.demo"]
    assert [m.name for m in cb.search_registered_models()] == ["dev.other"]
    assert sorted(str(v.version) for v in ca.search_model_versions("name='dev.demo'")) == ["1", "2"]
    assert [str(v.version) for v in cb.search_model_versions("name='dev.other'")] == ["1"]
    run_a = ca.get_run(ra1.run_id)
    assert run_a.data.tags["loopline.env"] == "dev" and run_a.info.artifact_uri.startswith((tmp_path / "a").as_uri())
    assert cb.get_run(rb1.run_id).info.artifact_uri.startswith((tmp_path / "b").as_uri())
    # each champion loads its own model: its run, and its predictions differ from the other project's
    champ_a, champ_b = load_champion(a), load_champion(b)
    assert (champ_a.run_id, champ_b.run_id) == (ra1.run_id, rb1.run_id)
    from loopline.runtime import example_frame

    X = example_frame(champ_a.runtime)
    assert not np.allclose(champ_a.runtime.predict_frame(X).predictions, champ_b.runtime.predict_frame(X).predictions)
    assert _globals() == before


def test_contexts_are_cached_per_root_and_env(tmp_path: Path) -> None:
    from loopline import context

    a, b = _two(tmp_path)
    assert context.context(a) is context.context(a)
    assert context.context(a) is not context.context(b)
    assert tracking.client(a) is context.context(a).client
    assert tracking.client(a)._tracking_client.tracking_uri == tracking.db_uri(a.tracking_uri)
    assert tracking.client(b)._registry_uri == tracking.db_uri(b.registry_uri)
    again = make_project(tmp_path / "a", {"environments": {"dev": {"tracking_uri": f"sqlite:///{tmp_path / 'x.db'}"}}})
    assert context.context(again).client is not context.context(a).client  # same root and env, new URIs


def test_trainings_in_two_threads_do_not_interleave(tmp_path: Path, user_uris: tuple[str, str]) -> None:
    a, b = _two(tmp_path)
    before = _globals()
    errors: list[BaseException] = []

    def run(p: Project) -> None:
        try:
            train(p)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [m.name for m in tracking.client(a).search_registered_models()] == ["dev.demo"]
    assert [m.name for m in tracking.client(b).search_registered_models()] == ["dev.other"]
    assert _globals() == before


def test_copy_across_environments_leaves_the_callers_uris(tmp_path: Path, user_uris: tuple[str, str]) -> None:
    staging = make_project(tmp_path, env="staging", write_features=("staging", "prod"))
    prod = make_project(tmp_path, env="prod", write_features=())
    before = _globals()
    train(staging)
    registry.promote(staging)
    result = registry.copy(staging, prod)
    assert result.promoted and (result.model, result.version) == ("prod.demo", "1")
    mv = tracking.client(prod).get_model_version("prod.demo", "1")
    assert mv.tags["loopline.copied_from"] == "staging.demo/1"
    assert [m.name for m in tracking.client(staging).search_registered_models()] == ["staging.demo"]
    assert _globals() == before


def test_training_inside_the_callers_active_run_neither_nests_nor_ends_it(
    tmp_path: Path, user_uris: tuple[str, str]
) -> None:
    import mlflow

    mine_uri = f"sqlite:///{tmp_path / 'user.db'}"  # MLflow 3 refuses new runs in a file store
    mlflow.set_tracking_uri(mine_uri)  # restored by the user_uris fixture
    p = make_project(tmp_path / "proj")
    with mlflow.start_run() as mine:  # the notebook's own run, in the user's store
        r = train(p)
        active = mlflow.active_run()
        assert active is not None and active.info.run_id == mine.info.run_id
        mlflow.log_metric("mine", 1.0)
    assert "mlflow.parentRunId" not in tracking.client(p).get_run(r.run_id).data.tags
    last = mlflow.last_active_run()
    assert last is not None and last.info.run_id == mine.info.run_id
    assert mlflow.MlflowClient(mine_uri).get_run(mine.info.run_id).data.metrics == {"mine": 1.0}
    assert mlflow.get_tracking_uri() == mine_uri
