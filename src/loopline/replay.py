"""`loopline replay`: run the real loop over a labelled history, window by window, and judge it.

The history (a configured source, read once) is cut into windows by ``model.time_column``
(``--every 1mo``) or by row count (``--rows N``). The first ``--initial`` windows train and promote a
first model. Then, for every later window, exactly what production does: ingest the window (its labels
held back: the target is null in ``features``), batch-score it with the champion, optionally send a
sample through a real HTTP server, deliver the labels (``feedback`` by ``model.keys``; without keys the
labelled rows come back into ``features``), and run one turn of the loop (monitor -> retrain -> gate ->
promote). Each window is scored three ways on the same rows:

* **loop**: the predictions the champion of that moment actually wrote to ``predictions``;
* **never retrained**: the first model;
* **oracle**: the same estimator and parameters refit on every labelled row before the window.

A good loop tracks the oracle and beats the never-retrained model wherever the data drifts. Every
policy (the project's config, plus ``replay.policies`` chosen with ``--policy``) runs in its own
state folder ``.loopline/replay/<policy>/`` (its own MLflow registry and tables); the per-window rows
go to the ``replay`` table of the selected environment and to a self-contained HTML page.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from loopline.compat import require
from loopline.display import repr_html
from loopline.errors import LooplineError

if TYPE_CHECKING:
    import pandas as pd

    from loopline.batch import BatchResult
    from loopline.config import Project
    from loopline.labels import LabelSpec
    from loopline.loop import LoopResult
    from loopline.runtime import Output

TABLE = "replay"
_TS = pa.timestamp("us", tz="UTC")
REPLAY_SCHEMA = pa.schema(
    [
        pa.field("replay_id", pa.string(), nullable=False),
        pa.field("policy", pa.string(), nullable=False),
        pa.field("window", pa.int64(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("window_start", _TS),
        pa.field("window_end", _TS),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("loop", pa.float64()),
        pa.field("never_retrained", pa.float64()),
        pa.field("oracle", pa.float64()),
        pa.field("champion_version", pa.string()),
        pa.field("action", pa.string()),
        pa.field("triggers", pa.string()),
        pa.field("drift_share", pa.float64()),
        pa.field("seconds", pa.float64()),
        pa.field("recorded_at", _TS, nullable=False),
    ]
)
_EVERY = re.compile(r"^\s*(\d+)\s*(mo|w|d|h)\s*$")


class ReplayError(LooplineError):
    """The replay could not run (bad source, windows, policy, metric)."""


@dataclass
class Window:
    index: int
    label: str
    start: datetime | None
    end: datetime | None
    rows: pa.Table


@dataclass
class WindowResult:
    window: int
    label: str
    start: datetime | None
    end: datetime | None
    rows: int
    loop: float | None
    never_retrained: float | None
    oracle: float | None
    champion_version: str
    action: str
    triggers: list[str] = field(default_factory=list)
    drift_share: float | None = None
    seconds: float = 0.0


@dataclass
class PolicyResult:
    name: str
    overrides: dict[str, Any]
    windows: list[WindowResult] = field(default_factory=list)
    first_version: str = ""
    seconds: float = 0.0

    def mean(self, which: str) -> float | None:
        values = [getattr(w, which) for w in self.windows if getattr(w, which) is not None]
        return float(np.mean(values)) if values else None


@dataclass
class ReplayResult:
    _repr_html_ = repr_html  # the notebook view: loopline.display

    replay_id: str
    metric: str
    lower_is_better: bool
    source: str
    policies: list[PolicyResult]
    report: Path | None = None
    table_version: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        def means(p: PolicyResult) -> dict[str, Any]:
            loop, oracle = p.mean("loop"), p.mean("oracle")
            return {
                "loop": loop,
                "never_retrained": p.mean("never_retrained"),
                "oracle": oracle,
                "loop_over_oracle": (loop / oracle) if loop is not None and oracle else None,
            }

        return {
            "replay_id": self.replay_id,
            "metric": self.metric,
            "lower_is_better": self.lower_is_better,
            "source": self.source,
            "report": str(self.report) if self.report else None,
            "seconds": round(self.seconds, 1),
            "policies": [
                {
                    "name": p.name,
                    "overrides": p.overrides,
                    "means": means(p),
                    "windows": [
                        {**dataclasses.asdict(w), "start": _iso(w.start), "end": _iso(w.end)} for w in p.windows
                    ],
                }
                for p in self.policies
            ],
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ----------------------------------------------------------------------------- windows
def cut_windows(table: pa.Table, time_column: str | None, every: str | None, rows: int | None) -> list[Window]:
    """The history as consecutive windows: by event time (``every``) or by row count (``rows``)."""
    if (every is None) == (rows is None):
        raise ReplayError(
            "say how to cut the history into windows: --every (1mo, 2w, 7d, 12h) or --rows N, not both",
            hint="or set replay.every / replay.rows in loopline.yaml",
        )
    if rows is not None:
        return [
            Window(i, f"rows {start + 1}-{min(start + rows, table.num_rows)}", None, None, table.slice(start, rows))
            for i, start in enumerate(range(0, table.num_rows, rows))
        ]
    assert every is not None
    m = _EVERY.match(every)
    if m is None:
        raise ReplayError(f"--every must look like 1mo, 2w, 7d or 12h, got {every!r}")
    if time_column is None or time_column not in table.column_names:
        raise ReplayError(
            f"the history has no column {time_column!r} (model.time_column) to cut --every {every} windows by"
            if time_column
            else f"--every {every} needs model.time_column",
            hint=f"its columns: {', '.join(table.column_names)}; or cut by row count with --rows N",
        )
    return _time_windows(table, time_column, int(m.group(1)), m.group(2))


def _time_windows(table: pa.Table, column: str, n: int, unit: str) -> list[Window]:
    import pandas as pd
    import pyarrow.compute as pc

    if n <= 0:
        raise ReplayError("--every must be a positive length")
    times = pd.to_datetime(pc.cast(table.column(column), pa.timestamp("us", tz="UTC")).to_pandas(), utc=True)
    if times.isna().any():
        raise ReplayError(f"the history's time column {column!r} has {int(times.isna().sum())} null value(s)")
    order = np.argsort(times.to_numpy(), kind="stable")
    table, times = table.take(pa.array(order)), times.iloc[order].reset_index(drop=True)
    offset: Any = pd.DateOffset(months=n) if unit == "mo" else pd.Timedelta(**{_UNITS[unit]: n})
    start = times.iloc[0].normalize() if unit != "h" else times.iloc[0].floor("h")
    if unit == "mo":
        start = start.replace(day=1)
    windows: list[Window] = []
    last = times.iloc[-1]
    while start <= last:
        end = start + offset
        mask = ((times >= start) & (times < end)).to_numpy()
        if mask.any():
            idx = np.nonzero(mask)[0]
            label = f"{start:%Y-%m}" if unit == "mo" else f"{start:%Y-%m-%d}" + (f" {start:%H}h" if unit == "h" else "")
            windows.append(
                Window(len(windows), label, start.to_pydatetime(), end.to_pydatetime(), table.take(pa.array(idx)))
            )
        start = end
    return windows


_UNITS = {"w": "weeks", "d": "days", "h": "hours"}


# ----------------------------------------------------------------------------- policies
def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """``["training.refit=false", "retraining.triggers=[always]"]`` -> a nested override (values are YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key.strip()):
            raise ReplayError(
                f"--set must look like section.key=value, got {pair!r}", hint="e.g. --set training.refit=false"
            )
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parsed
    return out


DEMO_PROJECT = "bikeshare"
DEMO_DATA = "pkg://ISLP/data/Bikeshare.csv"


def is_demo_project(project: Project) -> bool:
    """The Bikeshare example (or a copy): project name ``bikeshare`` and a source reading the ISLP Bikeshare data
    (what `loopline demo` accepts before it replaces any state)."""
    if project.config.project != DEMO_PROJECT:
        return False
    return any(DEMO_DATA in (s.path or "", *s.files.values()) for s in project.config.sources.values())


def policy_project(project: Project, name: str, overrides: dict[str, Any]) -> Project:
    """The project under ``overrides``, with its own fresh state folder ``.loopline/replay/<name>/``."""
    from loopline.config import deep_merge, validate

    data = deep_merge(project.config.model_dump(mode="python"), overrides)
    data["retraining"] = {**data["retraining"], "source": None}  # the replay delivers the data
    if project.config.model.keys:
        data["retraining"]["use_feedback_labels"] = True  # labels arrive as feedback, by key
    cfg = validate(data, f"{project.config_path.name} [replay policy {name}]")
    state = project.root / ".loopline" / "replay" / name
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    tracking = f"sqlite:///{state / 'mlflow.db'}"
    return dataclasses.replace(
        project,
        config=cfg,
        env=f"replay-{name}",
        state_dir=state,
        storage_root=str(state / "tables"),
        storage_options={},
        tracking_uri=tracking,
        registry_uri=tracking,
        artifact_root=(state / "artifacts").as_uri(),
        registered_model=f"replay.{cfg.model.name}",
    )


# ----------------------------------------------------------------------------- one policy
class _Truth:
    """Each window's labelled feature rows, as they came out of the features hook (the oracle's data)."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def before(self) -> pd.DataFrame:
        import pandas as pd

        return pd.concat(self.frames, ignore_index=True)


class PolicyRun:
    """The real loop over the windows for one policy (see the module docstring)."""

    def __init__(
        self,
        base: Project,
        name: str,
        overrides: dict[str, Any],
        source: str,
        windows: list[Window],
        initial: int,
        metric: str | None,
        serve: bool,
        sample: int,
        oracle: dict[int, float | None],
        say: Callable[[str], None],
    ) -> None:
        self.project = policy_project(base, name, overrides)
        self.result = PolicyResult(name, overrides)
        self.source, self.windows, self.initial = source, windows, initial
        self.metric, self.serve, self.sample = metric, serve, sample
        self.oracle_cache, self.say = oracle, say
        self.truth = _Truth()

    # -- steps
    def _ingest(self, w: Window) -> tuple[str, pd.DataFrame]:
        from loopline.ingest import run_pipeline
        from loopline.sources import OpenedSource

        bid = f"replay-w{w.index:03d}"
        reader = pa.RecordBatchReader.from_batches(w.rows.schema, w.rows.to_batches())
        opened = OpenedSource(self.source, "replay", f"window {w.label}", reader)
        run_pipeline(self.project, self.source, batch_id=bid, opened=opened)
        frame = self._features(bid)
        if frame.empty:
            raise ReplayError(f"window {w.label}: no rows reached the features table (all quarantined?)")
        return bid, frame

    def _features(self, bid: str) -> pd.DataFrame:
        import pyarrow.dataset as ds

        from loopline.tables import DeltaStore

        store = DeltaStore(self.project.storage_root)
        return store.read("features", filter=ds.field("_batch_id") == bid).to_pandas()

    def _hide_labels(self, bid: str) -> None:
        """The window's labels have not arrived yet: its target is null in ``features`` until they do."""
        import pyarrow.dataset as ds

        from loopline.tables import DeltaStore

        store = DeltaStore(self.project.storage_root)
        t = store.read("features", filter=ds.field("_batch_id") == bid)
        target = self.project.config.model.target
        i = t.schema.get_field_index(target)
        store.replace_batch("features", t.set_column(i, target, pa.nulls(t.num_rows, t.schema.field(i).type)), bid)

    def _deliver_labels(self, bid: str, truth: pd.DataFrame, url: str | None, spec: LabelSpec) -> None:
        """Labels arrive: as feedback by key (through HTTP when serving), else the labelled rows come back."""
        from loopline.tables import DeltaStore

        cfg = self.project.config
        store = DeltaStore(self.project.storage_root)
        if not cfg.model.keys:
            store.replace_batch("features", _from_pandas(truth, store.schema("features")), bid)
            return
        if url is not None:
            _post_feedback(url, cfg.model.keys, cfg.model.target, truth)
            return
        from loopline.labels import arrow_type

        cols: dict[str, Any] = {"request_id": pa.nulls(len(truth), pa.string())}
        fschema = store.schema("features")
        for k in cfg.model.keys:
            cols[k] = pa.array(truth[k].tolist(), fschema.field(k).type)
        cols["label"] = pa.array(truth[cfg.model.target].tolist(), arrow_type(spec.kind))
        cols["received_at"] = pa.array([datetime.now(UTC)] * len(truth), _TS)
        cols["_source"] = pa.array(["replay"] * len(truth), pa.string())
        store.append("feedback", pa.table(cols), writer="loopline.replay")

    # -- the run
    def run(self) -> PolicyResult:
        from loopline import registry, runtime
        from loopline.context import context
        from loopline.labels import from_config
        from loopline.training import train
        from loopline.training_data import prepare

        started = time.monotonic()
        p = self.project
        for w in self.windows[: self.initial]:
            _, frame = self._ingest(w)
            self.truth.frames.append(frame)
        first = train(p)
        registry.promote(p, first.version, force=not first.gate.passed, reason="replay: the first model")
        self.result.first_version = first.version
        never = runtime.load(first.model_uri, from_config(p.config.model), ctx=context(p))
        self.metric = self.metric or first_metric(p, never.spec)
        prepared = prepare(p)
        self.say(f"[{self.result.name}] v{first.version} trained on {self.initial} window(s); metric {self.metric}")
        with _server(p) if self.serve else nullcontext(None) as url:
            for w in self.windows[self.initial :]:
                self.result.windows.append(self._window(w, never, prepared, url))
        self.result.seconds = time.monotonic() - started
        return self.result

    def _window(self, w: Window, never: Any, prepared: Any, url: str | None) -> WindowResult:
        from loopline.jobs import run_job

        t0, wall = datetime.now(UTC), time.monotonic()
        bid, truth = self._ingest(w)
        self._hide_labels(bid)
        batch: BatchResult = run_job(self.project, "batch", batch_id=bid, input_batch=bid).result  # type: ignore[assignment]
        champion = str(batch.model_version)
        if url is not None and self.sample:
            _send(url, self.project, truth, self.sample, seed=w.index)
        target = self.project.config.model.target
        labelled = truth[truth[target].notna()].reset_index(drop=True)
        if len(labelled):
            self._deliver_labels(bid, labelled, url, never.spec)
        if url is not None:
            time.sleep(self.project.config.serving.log.flush_interval.total_seconds() + 0.5)
        if w.start is not None and self.project.config.model.time_column:  # the window itself, on event time
            bounds: dict[str, Any] = {"since": w.start, "until": w.end, "time": "event"}
        else:  # windows by row count: what was scored since this window began
            bounds = {"since": t0, "time": "wall"}
        turn: LoopResult = run_job(self.project, "loop", **bounds).result  # type: ignore[assignment]
        assert self.metric is not None
        loop_value = never_value = None
        if len(labelled):  # a window whose labels never came is recorded without metrics
            loop_value = self._score_loop(bid, labelled, champion)
            never_value = _metric(self.metric, labelled, self.project, never.predict_frame(labelled), never.spec)
            if w.index not in self.oracle_cache:
                before = self.truth.before()
                before = before[before[target].notna()]
                self.oracle_cache[w.index] = _oracle(self.project, prepared, before, labelled, self.metric)
        self.truth.frames.append(truth)
        share = turn.monitor.drift.share if turn.monitor is not None else None
        row = WindowResult(
            w.index, w.label, w.start, w.end, len(truth), loop_value, never_value, self.oracle_cache.get(w.index),
            champion, turn.action if len(labelled) else f"no labels; {turn.action}", list(turn.triggers), share,
            time.monotonic() - wall,
        )  # fmt: skip
        self.say(
            f"[{self.result.name}] {w.label}: champion v{champion} {self.metric} {_fmt(loop_value)} | never "
            f"{_fmt(never_value)} | oracle {_fmt(row.oracle)} | {turn.action}"
        )
        return row

    def _score_loop(self, bid: str, truth: pd.DataFrame, version: str) -> float | None:
        """The metric of what the champion wrote to ``predictions`` for this window (joined by key)."""
        import pyarrow.dataset as ds

        from loopline import runtime
        from loopline.context import context
        from loopline.labels import from_config
        from loopline.runtime import Output
        from loopline.tables import DeltaStore

        p = self.project
        rt = runtime.load(f"models:/{p.registered_model}/{version}", from_config(p.config.model), ctx=context(p))
        keys = p.config.model.keys
        if not keys:
            return _metric(self.metric or "", truth, p, rt.predict_frame(truth), rt.spec)
        preds = DeltaStore(p.storage_root).read("predictions", filter=ds.field("_batch_id") == bid).to_pandas()
        merged = truth[[*keys, p.config.model.target]].merge(preds, on=keys, how="inner", validate="one_to_one")
        proba = None
        if rt.spec.is_classifier and "probabilities" in merged and merged["probabilities"].notna().all():
            proba = np.array([[dict(m).get(c, np.nan) for c in rt.spec.classes] for m in merged["probabilities"]])
        out = Output(merged["prediction"].to_numpy(), proba)
        return _metric(self.metric or "", merged, p, out, rt.spec)


# ----------------------------------------------------------------------------- scoring
def first_metric(project: Project, spec: LabelSpec) -> str:
    from loopline.evaluation import metric_names

    return project.config.replay.metric or metric_names(project, spec)[0]


def _metric(name: str, rows: pd.DataFrame, project: Project, out: Output, spec: LabelSpec) -> float | None:
    from loopline.evaluation import compute_metrics

    value = compute_metrics([name], rows[project.config.model.target].to_numpy(), out, spec).get(name)
    return None if value is None else float(value)


def _oracle(project: Project, prepared: Any, before: pd.DataFrame, window: pd.DataFrame, metric: str) -> float | None:
    """The same estimator and parameters refit on every labelled row before the window, scored on it."""
    from loopline.training import _output, _Trainer

    trainer = _Trainer(project)
    model = trainer.fit(prepared, dict(project.config.training.params), train=before)
    spec = trainer.spec(prepared, model)
    return _metric(metric, window, project, _output(model, window[prepared.input_columns], spec), spec)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _from_pandas(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False).select(schema.names).cast(schema)


# ----------------------------------------------------------------------------- HTTP
@contextmanager
def _server(project: Project) -> Iterator[str]:
    """A real uvicorn server for the policy's project, in this process (it serves the replay's registry)."""
    import logging
    import socket
    import threading

    httpx = require("httpx", extra="replay")
    import uvicorn

    from loopline.serving.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per replayed request is noise
    server = uvicorn.Server(uvicorn.Config(create_app(project), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="loopline-replay-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        server.should_exit = True
        raise ReplayError("the replay's HTTP server did not become ready in 60 s")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def _send(url: str, project: Project, frame: pd.DataFrame, sample: int, seed: int) -> int:
    """``sample`` rows, one request each, through ``/invocations`` (with the keys, so feedback can join)."""
    httpx = require("httpx", extra="replay")

    cols = project.config.model.input_columns(list(frame.columns))
    keys = [k for k in project.config.model.keys if k not in cols]
    rows = frame.sample(n=min(sample, len(frame)), random_state=seed)[[*cols, *keys]]
    ok = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for record in rows.to_dict(orient="records"):
            body = {"dataframe_records": [{k: _json(v) for k, v in record.items()}]}
            ok += client.post("/invocations", json=body).status_code == 200
    return ok


def _post_feedback(url: str, keys: list[str], target: str, truth: pd.DataFrame) -> None:
    httpx = require("httpx", extra="replay")

    items = [
        {"keys": {k: _json(v) for k, v in zip(keys, row[:-1], strict=True)}, "label": _json(row[-1])}
        for row in truth[[*keys, target]].itertuples(index=False, name=None)
    ]
    with httpx.Client(base_url=url, timeout=120) as client:
        r = client.post("/feedback", json=items)
    if r.status_code >= 400:
        raise ReplayError(f"the replay's feedback was refused: {r.status_code} {r.text[:300]}")


def _json(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, np.generic):
        return v.item()
    return v


# ----------------------------------------------------------------------------- the command
def read_history(project: Project, source: str, params: dict[str, Any]) -> pa.Table:
    from loopline.sources import open_source

    opened = open_source(project, source, params)
    try:
        table = opened.reader.read_all()
    finally:
        opened.close()
    if table.num_rows == 0:
        raise ReplayError(f"source {source!r} returned no rows to replay")
    return table


def replay(
    project: Project,
    *,
    source: str | None = None,
    params: dict[str, Any] | None = None,
    every: str | None = None,
    rows: int | None = None,
    initial: int | None = None,
    metric: str | None = None,
    policies: Sequence[str] = (),
    sets: Sequence[str] = (),
    serve: bool | None = None,
    sample: int | None = None,
    say: Callable[[str], None] = print,
) -> ReplayResult:
    """Replay the history under the project's config (and each named policy); see the module docstring."""
    from loopline.ingest import default_source
    from loopline.metrics import lower_is_better

    started = time.monotonic()
    rc = project.config.replay
    name = source or rc.source or default_source(project)
    every = every if every is not None else (rc.every if rows is None else None)
    rows = rows if rows is not None else (rc.rows if every is None else None)
    initial = initial or rc.initial
    unknown = [p for p in policies if p not in rc.policies]
    if unknown:
        raise ReplayError(
            f"unknown replay polic{'ies' if len(unknown) > 1 else 'y'} {unknown}",
            hint=f"defined under replay.policies: {', '.join(rc.policies) or '(none)'}",
        )
    history = read_history(project, name, {**rc.params, **(params or {})})
    windows = cut_windows(history, project.config.model.time_column, every, rows)
    if len(windows) <= initial:
        raise ReplayError(
            f"the history makes {len(windows)} window(s); replaying needs more than the {initial} initial one(s)",
            hint="use shorter windows (--every / --rows) or fewer --initial windows",
        )
    if rc.serve if serve is None else serve:
        require("httpx", extra="replay")  # before any window runs
    base = parse_sets(sets)
    runs = [("current", base)] + [(p, _merge(base, rc.policies[p])) for p in policies]
    oracle: dict[int, float | None] = {}
    results = []
    for policy, overrides in runs:
        run = PolicyRun(
            project, policy, overrides, name, windows, initial, metric or rc.metric,
            rc.serve if serve is None else serve, rc.sample if sample is None else sample, oracle, say,
        )  # fmt: skip
        results.append(run.run())
        metric = metric or run.metric
    assert metric is not None
    result = ReplayResult(uuid.uuid4().hex[:12], metric, lower_is_better(metric), name, results)
    result.table_version = _write_table(project, result)
    from loopline.replay_report import write_report

    result.report = write_report(project, result)
    result.seconds = time.monotonic() - started
    return result


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    from loopline.config import deep_merge

    return deep_merge(a, b)


def _write_table(project: Project, result: ReplayResult) -> int:
    from loopline.tables import DeltaStore

    now = datetime.now(UTC)
    rows = [
        {
            "replay_id": result.replay_id,
            "policy": p.name,
            "window": w.window,
            "label": w.label,
            "window_start": w.start,
            "window_end": w.end,
            "rows": w.rows,
            "metric": result.metric,
            "loop": w.loop,
            "never_retrained": w.never_retrained,
            "oracle": w.oracle,
            "champion_version": w.champion_version,
            "action": w.action,
            "triggers": ",".join(w.triggers),
            "drift_share": w.drift_share,
            "seconds": round(w.seconds, 3),
            "recorded_at": now,
        }
        for p in result.policies
        for w in p.windows
    ]
    store = DeltaStore(project.storage_root, project.storage_options)
    return store.append(TABLE, pa.Table.from_pylist(rows, schema=REPLAY_SCHEMA), replay_id=result.replay_id)
