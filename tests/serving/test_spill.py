"""Workers of one server share the spill folder: one commits, the others stage (serving/spill.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_logger import _entry

from loopline.config import LogConfig
from loopline.serving import logger as logger_mod
from loopline.serving.logger import PredictionLogger
from loopline.serving.metrics import Metrics
from loopline.serving.spill import SpillFolder
from loopline.tables import DeltaStore

CFG = LogConfig(flush_rows=10_000, flush_interval=timedelta(seconds=60))


def _worker(store: DeltaStore, tmp_path: Path, metrics: Metrics, cfg: LogConfig = CFG) -> PredictionLogger:
    """One server worker's prediction log; all of them share ``tmp_path/spill``."""
    return PredictionLogger(store, cfg, "regression", tmp_path / "spill", metrics)


def _ids(store: DeltaStore) -> list[str]:
    return sorted(store.read("inference_log").column("request_id").to_pylist())


def test_one_committer_per_folder(tmp_path: Path) -> None:
    a, b = SpillFolder(tmp_path), SpillFolder(tmp_path)
    assert a.try_lead() and a.leading
    assert not b.try_lead()  # a separate open file: the flock conflicts even in one process
    assert b.lead(timeout=0.1) is False
    a.resign()
    assert b.try_lead()
    assert not a.try_lead()
    b.resign()


def test_lock_of_a_dead_worker_is_free(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from loopline.serving.spill import SpillFolder;"
        "f = SpillFolder(Path(sys.argv[1])); assert f.try_lead(); print('led', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "led"
    folder = SpillFolder(tmp_path)
    assert not folder.try_lead()
    proc.kill()
    proc.wait(timeout=10)
    assert folder.lead(timeout=5)


def test_stale_claims_are_put_back(tmp_path: Path) -> None:
    folder = SpillFolder(tmp_path)
    folder.put(pa.table({"x": [1]}))
    (p,) = folder.waiting()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.replace(p, p.with_name(f"{p.name}.claimed-{dead.stdout.strip()}"))
    assert folder.waiting() == []  # claimed, by a process that is gone
    assert folder.try_lead()  # taking the lock puts a dead committer's claims back
    assert folder.waiting() == [p]
    assert folder.read(folder.claim(p) or p).num_rows == 1


def test_workers_stage_and_the_committer_commits_once(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path / "tables"))
    ma, mb = Metrics(), Metrics()

    async def scenario() -> None:
        a = _worker(store, tmp_path, ma)
        b = _worker(store, tmp_path, mb)
        await a.start()  # the first to start commits
        await b.start()
        for i in range(3):
            b.record(_entry(i, rows=2))
        await b.flush()
        assert not store.exists("inference_log")  # b only staged its rows
        assert len(list((tmp_path / "spill").glob("*.arrow"))) == 1
        assert mb.staged._value.get() == 6
        a.record(_entry(10))
        await a.flush()  # a's own row and b's staged rows: one commit
        assert store.info("inference_log").version == 0
        assert not list((tmp_path / "spill").glob("*.arrow"))
        assert ma.flushed._value.get() == 7 and ma.flushes._value.get() == 1
        b.record(_entry(20))
        a.record(_entry(21))
        await a.close()  # the committer closes first and resigns; b takes over at its close
        await b.close()

    asyncio.run(scenario())
    want = sorted([f"r{i}-{k}" for i in range(3) for k in range(2)] + ["r10-0", "r20-0", "r21-0"])
    assert _ids(store) == want
    assert not list((tmp_path / "spill").glob("*.arrow*"))


def test_last_worker_to_close_commits_what_others_staged(tmp_path: Path) -> None:
    """SIGTERM reaches all workers at once: a non-committer that closes first stages, waits for the lock,
    and commits after the committer's last commit, so nothing is left behind."""
    store = DeltaStore(str(tmp_path / "tables"))

    async def scenario() -> None:
        a = _worker(store, tmp_path, Metrics())
        b = _worker(store, tmp_path, Metrics())
        await a.start()
        await b.start()
        a.record(_entry(1))
        b.record(_entry(2))
        closing_b = asyncio.create_task(b.close())  # b stages and waits in a thread for a's lock
        await asyncio.sleep(0.3)
        assert not closing_b.done()
        await a.close()
        await asyncio.wait_for(closing_b, timeout=10)

    asyncio.run(scenario())
    assert _ids(store) == ["r1-0", "r2-0"]
    assert not list((tmp_path / "spill").glob("*.arrow*"))


def test_a_running_committer_gets_the_rows_of_a_worker_that_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logger_mod, "FINAL_WAIT_SECONDS", 0.2)
    cfg = LogConfig(flush_rows=10_000, flush_interval=timedelta(milliseconds=50))
    store = DeltaStore(str(tmp_path / "tables"))

    async def scenario() -> None:
        a = _worker(store, tmp_path, Metrics())
        b = _worker(store, tmp_path, Metrics(), cfg)
        await a.start()
        await b.start()
        b.record(_entry(2))
        await b.close()  # gives up waiting for the lock: the files stay for a
        assert not store.exists("inference_log")
        assert len(list((tmp_path / "spill").glob("*.arrow"))) == 1
        await a.flush()
        await a.close()

    asyncio.run(scenario())
    assert _ids(store) == ["r2-0"]


def test_a_staged_file_that_cannot_fit_is_set_aside(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path / "tables"))
    metrics = Metrics()

    async def scenario() -> None:
        lg = _worker(store, tmp_path, metrics)
        await lg.start()
        lg.record(_entry(1))
        await lg.flush()
        SpillFolder(tmp_path / "spill").put(pa.table({"request_id": [7, 8], "x": ["not", "numbers"]}))
        (tmp_path / "spill" / "00000000000000000001-1-bad.arrow").write_bytes(b"not arrow")
        lg.record(_entry(2))
        wrong = _entry(3)  # a new model version sends text where the log has numbers
        wrong.inputs["x"] = np.array(["a"], dtype=object)
        lg.record(wrong)
        await lg.flush()
        lg.record(_entry(4))  # the log goes on
        await lg.close()

    asyncio.run(scenario())
    assert _ids(store) == ["r1-0", "r2-0", "r4-0"]  # only the request that cannot fit is set aside
    rejected = sorted((tmp_path / "spill" / "rejected").iterdir())
    assert len(rejected) == 3 and "00000000000000000001-1-bad.arrow" in [p.name for p in rejected]
    ids = [str(r) for p in rejected[1:] for r in SpillFolder.read(p).column("request_id").to_pylist()]
    assert sorted(ids) == ["7", "8", "r3-0"]
    assert metrics.flush_failures._value.get() == 3
    assert not list((tmp_path / "spill").glob("*.arrow*"))


def test_a_worker_that_cannot_stage_writes_its_own_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DeltaStore(str(tmp_path / "tables"))

    def disk_full(table: pa.Table, *, rejected: bool = False) -> Path:
        raise OSError(28, "No space left on device")

    async def scenario() -> None:
        a = _worker(store, tmp_path, Metrics())
        b = _worker(store, tmp_path, Metrics())
        await a.start()
        await b.start()
        SpillFolder(tmp_path / "spill").put(pa.table({"request_id": ["staged-by-c"], "x": [0.5]}))
        monkeypatch.setattr(b.folder, "put", disk_full)
        b.record(_entry(2))
        await b.flush()  # b commits its own rows, and leaves the committer's files alone
        assert _ids(store) == ["r2-0"]
        assert len(list((tmp_path / "spill").glob("*.arrow"))) == 1
        await a.close()
        monkeypatch.undo()
        await b.close()

    asyncio.run(scenario())
    assert _ids(store) == ["r2-0", "staged-by-c"]
