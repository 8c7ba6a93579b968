"""The closed-loop demo: replay 2011 of Capital Bikeshare through the whole loop.

Train on Jan-Mar and promote; then month by month (Apr-Dec): ingest the month, batch-score it with
the champion, send a sample of its rows through the real HTTP server, deliver the month's true counts
as feedback, and run the loop (monitor -> retrain -> gate -> promote). The never-retrained Jan-Mar
model is scored on the same months for comparison.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from loopline.errors import LooplineError

if TYPE_CHECKING:
    import pandas as pd

    from loopline.batch import BatchResult
    from loopline.config import Project
    from loopline.loop import LoopResult

SOURCE = "bikeshare"


@dataclass
class MonthRow:
    month: int
    rows: int
    champion_version: str
    mae_champion: float
    mae_baseline: float
    drift_share: float | None
    served: int
    action: str


@dataclass
class DemoResult:
    baseline_version: str
    months: list[MonthRow] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0

    @property
    def mae_loop(self) -> float:
        return _weighted([(m.mae_champion, m.rows) for m in self.months])

    @property
    def mae_baseline(self) -> float:
        return _weighted([(m.mae_baseline, m.rows) for m in self.months])


def _weighted(pairs: list[tuple[float, int]]) -> float:
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(project: Project, port: int, log_path: Path) -> Iterator[str]:
    """A real `loopline serve` process on 127.0.0.1, stopped with SIGTERM (which flushes its log)."""
    import httpx

    exe = Path(sys.executable).parent / "loopline"
    cmd = [str(exe), "serve", "--project", str(project.root), "--env", project.env, "--port", str(port)]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "LOOPLINE_DEBUG": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LooplineError(f"the demo server exited with {proc.returncode}", hint=f"see {log_path}")
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise LooplineError("the demo server did not become ready in 90 s", hint=f"see {log_path}")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _month_frame(project: Project, batch_id: str) -> pd.DataFrame:
    import pyarrow.dataset as ds

    from loopline.tables import DeltaStore

    store = DeltaStore(project.storage_root, project.storage_options)
    return store.read("features", filter=ds.field("_batch_id") == batch_id).to_pandas()


def _mae(y: Any, p: Any) -> float:
    import numpy as np

    return float(np.mean(np.abs(np.asarray(y, dtype=float) - np.asarray(p, dtype=float))))


def _send(url: str, project: Project, frame: pd.DataFrame, sample: int, seed: int) -> int:
    """Send ``sample`` rows one request each through /invocations; return the successful count."""
    import httpx

    cols = project.config.model.input_columns(list(frame.columns))
    rows = frame.sample(n=min(sample, len(frame)), random_state=seed)[cols]
    ok = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for record in rows.to_dict(orient="records"):
            r = client.post("/invocations", json={"dataframe_records": [record]})
            ok += r.status_code == 200
    return ok


def _feedback(url: str, project: Project, frame: pd.DataFrame) -> None:
    """Deliver the month's true counts as feedback, matched to the batch predictions by key."""
    import httpx

    keys, target = project.config.model.keys, project.config.model.target
    items = [
        {
            "keys": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in zip(keys, row[:-1], strict=True)},
            "label": float(row[-1]),
        }
        for row in frame[[*keys, target]].itertuples(index=False, name=None)
    ]
    with httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/feedback", json=items)
        if r.status_code >= 400:
            raise LooplineError(f"feedback was refused: {r.status_code} {r.text[:300]}")


def run_demo(
    project_dir: Path,
    env: str = "dev",
    months: range = range(4, 13),
    sample: int = 24,
    fresh: bool = True,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Replay 2011; see the module docstring."""
    from loopline import tracking
    from loopline.config import load_project
    from loopline.ingest import run_pipeline
    from loopline.registry import promote
    from loopline.training import train

    started = time.monotonic()
    project = load_project(project_dir, env)
    if fresh and project.state_dir.exists():
        say(f"resetting {project.state_dir}")
        shutil.rmtree(project.state_dir)
    for m in (1, 2, 3):
        run_pipeline(project, SOURCE, params={"month": m})
    say("ingested Jan-Mar 2011")
    first = train(project)
    if not first.gate.passed:
        raise LooplineError(f"the first model failed the gate: {first.gate.failed_rules}")
    promote(project, first.version, reason="demo: first model, trained on Jan-Mar")
    say(f"trained v{first.version} on Jan-Mar (test MAE {first.metrics.get('test_mae', float('nan')):.1f}); promoted")
    baseline = tracking.load_model(first.model_uri)
    result = DemoResult(baseline_version=first.version)
    logs = project.state_dir / "demo-server.log"
    with server(project, _free_port(), logs) as url:
        for m in months:
            t0 = datetime.now(UTC)
            res = run_pipeline(project, SOURCE, params={"month": m})
            batch = cast(
                "BatchResult", _job(project, "batch", batch_id=res.ingest.batch_id, input_batch=res.ingest.batch_id)
            )
            frame = _month_frame(project, res.ingest.batch_id)
            preds = _predictions(project, batch.batch_id)
            merged = frame.merge(preds, on=project.config.model.keys)
            target = project.config.model.target
            mae_champion = _mae(merged[target], merged["prediction"])
            cols = project.config.model.input_columns(list(frame.columns))
            mae_base = _mae(frame[target], baseline.predict(frame[cols]))
            served = _send(url, project, frame, sample, seed=m)
            _feedback(url, project, frame)
            time.sleep(project.config.serving.log.flush_interval.total_seconds() + 0.5)
            turn = cast("LoopResult", _job(project, "loop", since=t0, params={"month": m}))
            share = turn.monitor.drift.share if turn.monitor is not None else None
            row = MonthRow(m, len(frame), batch.model_version, mae_champion, mae_base, share, served, turn.action)
            result.months.append(row)
            if turn.monitor is not None and turn.monitor.report_html:
                result.report = turn.monitor.report_html
            say(
                f"{datetime(2011, m, 1):%b}: champion v{row.champion_version} MAE {mae_champion:.1f} "
                f"(never retrained: {mae_base:.1f}), drift share {share if share is None else round(share, 2)}, "
                f"{turn.action}"
            )
    result.seconds = time.monotonic() - started
    return result


def _job(project: Project, name: str, **options: Any) -> object:
    """Run a stage as a recorded job (it shows in the `runs` table like a scheduled run)."""
    from loopline.jobs import run_job

    record = run_job(project, name, **options)
    if record.status != "ok":
        raise LooplineError(f"the demo's {name} job did not run: {record.error}")
    return record.result


def _predictions(project: Project, batch_id: str) -> pd.DataFrame:
    import pyarrow.dataset as ds

    from loopline.tables import DeltaStore

    store = DeltaStore(project.storage_root, project.storage_options)
    cols = [*project.config.model.keys, "prediction"]
    return store.read("predictions", columns=cols, filter=ds.field("_batch_id") == batch_id).to_pandas()
