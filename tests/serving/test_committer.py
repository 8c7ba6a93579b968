"""The prediction log's committer process (serving/committer.py): a real child process commits what the
workers stage, ignores SIGINT/SIGTERM, commits everything when its stdin closes, and the workers take
over the commits when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_logger import _entry

from loopline.config import load_project
from loopline.serving import committer
from loopline.serving.logger import COMMITTER_ENV, PredictionLogger, spill_path
from loopline.serving.metrics import Metrics
from loopline.serving.spill import alive
from loopline.tables import DeltaStore

YAML = """\
project: demo
model: {name: demo, target: y}
serving:
  log: {flush_rows: 10000, flush_interval: 0.4s}
environments:
  prod: {}
"""


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "loopline.yaml").write_text(YAML)
    monkeypatch.setenv("LOOPLINE_PROJECT", str(tmp_path))
    monkeypatch.setenv("LOOPLINE_ENV", "prod")
    return tmp_path


@pytest.fixture
def child(root: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = committer.start()
    assert proc is not None
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _worker(root: Path, pid: int | None, monkeypatch: pytest.MonkeyPatch) -> tuple[PredictionLogger, DeltaStore]:
    if pid is not None:
        monkeypatch.setenv(COMMITTER_ENV, str(pid))
    project = load_project(root, "prod")
    store = DeltaStore(project.storage_root, project.storage_options)
    return PredictionLogger(store, project.config.serving.log, "regression", spill_path(project), Metrics()), store


def _rows(store: DeltaStore) -> int:
    return store.read("inference_log").num_rows if store.exists("inference_log") else 0


def _wait_rows(store: DeltaStore, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _rows(store) < n:
        assert time.monotonic() < deadline, f"{_rows(store)} rows in inference_log, expected {n}"
        time.sleep(0.1)


def test_committer_commits_staged_rows_and_outlives_signals(
    root: Path, child: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    lg, store = _worker(root, child.pid, monkeypatch)

    async def stage(first: int, n: int) -> None:
        await lg.start()
        for i in range(first, first + n):
            lg.record(_entry(i, rows=2))
        await lg.flush()

    asyncio.run(stage(0, 10))
    assert lg.rows_staged == 20 and lg.rows_flushed == 0  # the worker only stages
    _wait_rows(store, 20)  # committed by the child while it runs
    for sig in (signal.SIGINT, signal.SIGTERM):  # a Ctrl-C reaches the whole process group
        child.send_signal(sig)
    time.sleep(0.5)
    assert child.poll() is None
    asyncio.run(stage(10, 5))
    assert committer.stop(child) == 0  # stdin closed: commits what is left, exits 0
    assert _rows(store) == 30
    assert list(spill_path(load_project(root, "prod")).glob("*.arrow")) == []
    pids = {str(h["pid"]) for h in store.table("inference_log").history() if "pid" in h}
    assert pids == {str(child.pid)}  # every commit is the committer process's


def test_workers_commit_when_the_committer_is_gone(
    root: Path, child: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    lg, store = _worker(root, child.pid, monkeypatch)
    os.kill(child.pid, signal.SIGSTOP)  # alive but stuck: rows wait in the spill folder

    async def scenario() -> None:
        await lg.start()
        for i in range(4):
            lg.record(_entry(i))
        await lg.flush()
        assert _rows(store) == 0 and lg.rows_staged == 4
        assert lg.staged_ids({"r1-0", "r3-0", "r9-0"}) == {"r1-0", "r3-0"}  # feedback finds staged rows
        child.kill()  # not waited for here: `start`'s watcher reaps it, so it is not left a zombie
        deadline = time.monotonic() + 10
        while alive(child.pid):
            assert time.monotonic() < deadline, "the killed committer still looks alive (a zombie?)"
            await asyncio.sleep(0.05)
        for i in range(4, 6):
            lg.record(_entry(i))
        await lg.flush()  # the committer is dead: this worker takes the lock and commits everything
        await lg.close()

    asyncio.run(scenario())
    assert _rows(store) == 6 and lg.rows_flushed == 6


def test_start_reports_a_committer_that_cannot_load_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPLINE_PROJECT", str(tmp_path / "missing"))
    assert committer.start() is None  # the workers commit themselves


def test_a_staging_worker_sees_new_columns_of_the_table(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that only stages never writes, so it re-reads the table's schema now and then: a column
    the committer added later still sets aside just the requests that send it with another type."""
    import numpy as np
    import pyarrow as pa

    from loopline.serving import commit

    lg, store = _worker(root, os.getpid(), monkeypatch)  # a live "committer": this worker only stages

    async def flush(entries: list) -> None:  # type: ignore[type-arg]
        for e in entries:
            lg.record(e)
        await lg.flush()

    store.append("inference_log", pa.table({"request_id": ["first"]}))
    asyncio.run(flush([_entry(0)]))  # the worker reads the table's schema: no column z
    store.append("inference_log", pa.table({"request_id": ["old"], "z": pa.array([1], pa.int64())}))
    monkeypatch.setattr(commit, "SCHEMA_SECONDS", 0.0)
    bad = _entry(2)
    bad.inputs["z"] = np.array(["not a number"], dtype=object)
    asyncio.run(flush([_entry(1), bad, _entry(3)]))
    folder = spill_path(load_project(root, "prod"))
    rejected = [pa.ipc.open_file(str(p)).read_all() for p in (folder / "rejected").glob("*.arrow")]
    assert [t.column("request_id").to_pylist() for t in rejected] == [["r2-0"]]
    staged = sorted(
        i for p in folder.glob("*.arrow") for i in pa.ipc.open_file(str(p)).read_all()["request_id"].to_pylist()
    )
    assert staged == ["r0-0", "r1-0", "r3-0"]
