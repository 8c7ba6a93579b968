"""`loopline.open(...)`: the stages as methods on one environment, their results, and how they render in a
notebook (``_repr_html_``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import loopline
from loopline.api import Environment
from loopline.errors import ConfigError, JobError, LooplineError, RegistryError, TableError
from loopline.replay import PolicyResult, ReplayResult, WindowResult


@pytest.fixture
def env(project_dir: Path) -> Environment:
    return loopline.open(project_dir, env="dev")


def test_open_names_a_missing_project_or_environment(tmp_path: Path, project_dir: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere does not exist"):
        loopline.open(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="nope"):
        loopline.open(project_dir, env="nope")


def test_the_loop_from_python_and_its_notebook_views(env: Environment) -> None:
    assert repr(env).startswith("<loopline 'demo' env='dev'")
    ingested = env.ingest("points")
    assert ingested.ingest.rows == 200 and ingested.features.rows == 200
    batch_id = ingested.ingest.batch_id
    assert env.validate(batch_id).passed
    assert env.build_features(batch_id).rows == 200

    trained = env.train()
    assert trained.version == "1" and trained.gate.passed
    html = trained._repr_html_()
    assert f"train: {trained.model} version 1" in html
    assert "passed" in html and "test" in html and "mae" in html

    event = env.promote()
    assert event.to_version == "1"  # type: ignore[union-attr]
    assert next(e.action for e in env.history()) == "promote"
    with pytest.raises(RegistryError):
        env.promote(version=1, to="prod")

    scored = env.score()
    assert scored.rows == 200 and scored.model_version == "1"
    html = scored._repr_html_()
    assert f"batch {scored.batch_id}" in html and "rows scored" in html and ">200<" in html

    checked = env.monitor(window="1d")
    assert checked.verdict in ("ok", "breach")
    html = checked._repr_html_()
    assert "monitoring" in html and checked.verdict in html and "feature drift" in html and ">x<" in html

    turn = env.loop(window=timedelta(days=1))
    html = turn._repr_html_()
    assert f"loop {turn.loop_id}" in html and "decisions" in html and "monitor" in html

    report = env.status()
    assert report.champion is not None and report.champion.version == "1"
    html = report._repr_html_()
    assert "demo · env dev" in html and "champion" in html and "v1" in html and "last run of each job" in html

    frame = env.sql("select count(*) as n from predictions")
    assert isinstance(frame, pd.DataFrame) and int(frame["n"][0]) == 200
    table = env.sql("select id from features order by id limit 3", arrow=True)
    assert isinstance(table, pa.Table) and table.column("id").to_pylist() == [0, 1, 2]
    assert len(env.table("predictions")) == 200
    assert env.table("features", version=0, arrow=True).num_rows == 200
    assert {"raw", "features", "predictions", "runs"} <= {t.name for t in env.tables()}


def test_errors_name_the_thing(env: Environment) -> None:
    with pytest.raises(TableError, match="table 'nope' does not exist"):
        env.table("nope")
    with pytest.raises(LooplineError, match=r"window must be a duration like 7d.*got 'soon'"):
        env.monitor(window="soon")
    with pytest.raises(LooplineError, match="since must be an ISO date"):
        env.loop(since="yesterday")
    with pytest.raises(LooplineError, match=r"refused|read-only|not allowed|only"):
        env.sql("delete from runs")


def test_a_job_skipped_by_its_lock_is_an_error(env: Environment) -> None:
    from loopline.jobs import JobLock

    lock = JobLock.for_job(env.project, "train")
    assert lock.acquire()
    try:
        with pytest.raises(JobError, match="job 'train' is already running in env 'dev'"):
            env.train()
    finally:
        lock.release()


def test_replay_result_renders_its_means_and_windows() -> None:
    windows = [
        WindowResult(1, "2011-04", None, None, 700, 40.0, 80.0, 40.0, "1", "promoted v2"),
        WindowResult(2, "2011-05", None, None, 744, 30.0, 90.0, 25.0, "2", "v3 refused by the gate"),
    ]
    result = ReplayResult("abc123", "mae", True, "history", [PolicyResult("current", {}, windows)])
    html = result._repr_html_()
    assert "replay abc123: mean mae (lower is better) over history" in html
    assert ">35<" in html and ">85<" in html and ">32.5<" in html  # loop, never retrained, oracle means
    assert "2011-05" in html and "v3 refused by the gate" in html


def test_values_are_escaped() -> None:
    windows = [WindowResult(1, "<script>x</script>", None, None, 1, None, None, None, "1", "a & b")]
    html = ReplayResult("r", "mae", True, "<b>", [PolicyResult("p", {}, windows)])._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html and "a &amp; b" in html and "&lt;b&gt;" in html
