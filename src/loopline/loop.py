"""The closed loop: monitor -> (on breach or schedule) ingest -> train -> gate -> promote.

Every decision is one row of the ``decisions`` table (step, outcome, reasons, ids of everything
involved), so "why is version 7 in prod" has an answer. After ``retraining.max_gate_failures``
refused candidates in a row the loop stops promoting and flags the environment for human review
(``loopline review clear`` lifts it).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loopline.display import repr_html
from loopline.errors import LooplineError, MonitoringError, RegistryError

if TYPE_CHECKING:
    from loopline.config import Project
    from loopline.monitoring.monitor import MonitorResult
    from loopline.tables import DeltaStore

DECISIONS = "decisions"
EXIT_REFUSED = 4
EXIT_NEEDS_REVIEW = 12
_TS = pa.timestamp("us", tz="UTC")
DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("timestamp", _TS, nullable=False),
        pa.field("loop_id", pa.string(), nullable=False),
        pa.field("step", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("reasons", pa.string(), nullable=False),
        pa.field("refs", pa.string(), nullable=False),
    ]
)


@dataclass
class LoopResult:
    """What one turn of the loop decided (the same rows are in the ``decisions`` table)."""

    _repr_html_ = repr_html  # the notebook view: loopline.display

    loop_id: str
    triggers: list[str]
    action: str
    exit_code: int = 0
    monitor: MonitorResult | None = None
    candidate_version: str | None = None
    champion_version: str | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        why = ", ".join(self.triggers) or "no trigger"
        return f"{self.action} ({why})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "loop_id": self.loop_id,
            "triggers": self.triggers,
            "action": self.action,
            "exit_code": self.exit_code,
            "candidate_version": self.candidate_version,
            "champion_version": self.champion_version,
            "monitor": self.monitor.to_dict() if self.monitor else None,
            "decisions": [{**d, "timestamp": d["timestamp"].isoformat()} for d in self.decisions],
        }


class Decisions:
    """Collects the decision rows of one loop turn; written in one commit at the end (or on failure)."""

    def __init__(self, store: DeltaStore, loop_id: str) -> None:
        self.store, self.loop_id, self.rows = store, loop_id, []  # type: ignore[var-annotated]

    def add(self, step: str, outcome: str, reasons: Any = None, **refs: Any) -> None:
        self.rows.append(
            {
                "timestamp": datetime.now(UTC),
                "loop_id": self.loop_id,
                "step": step,
                "outcome": outcome,
                "reasons": json.dumps(reasons if reasons is not None else [], default=str),
                "refs": json.dumps({k: v for k, v in refs.items() if v is not None}, default=str),
            }
        )

    def flush(self) -> None:
        if self.rows:
            self.store.append(DECISIONS, pa.Table.from_pylist(self.rows, schema=DECISIONS_SCHEMA), loop_id=self.loop_id)


def triggers_of(result: MonitorResult) -> list[str]:
    """Which retraining triggers a monitoring result fired."""
    fired = []
    pred = result.prediction_drift
    if result.drift.verdict == "breach" or (pred is not None and pred.verdict == "breach"):
        fired.append("drift")
    if result.performance is not None and result.performance.verdict == "breach":
        fired.append("performance")
    if result.range is not None and result.range.verdict == "breach":
        fired.append("range")
    return fired


def consecutive_gate_failures(store: DeltaStore, since: datetime | None = None) -> int:
    """Refused candidates since the last passing one (and since ``since``, a human's review), from ``decisions``."""
    if not store.exists(DECISIONS):
        return 0
    import pyarrow.dataset as ds

    gates = store.read(DECISIONS, columns=["timestamp", "outcome"], filter=ds.field("step") == "gate")
    count = 0
    for row in sorted(gates.to_pylist(), key=lambda r: r["timestamp"], reverse=True):
        if row["outcome"] != "failed" or (since is not None and row["timestamp"] <= since):
            break
        count += 1
    return count


def apply_feedback_labels(project: Project, store: DeltaStore, report: list[str] | None = None) -> int:
    """Write feedback labels into the features table's target, matched by the model's keys.

    The latest label per key wins. Labels (typed, or text in older feedback tables) and keys are cast to the
    features table's column types: ``"1"`` into an int64 target, ``"true"`` into a bool one. A label or key that
    cannot be cast is left out and described in ``report`` (and the log), never a crash. Returns the number
    of feature rows updated."""
    import logging

    keys = project.config.model.keys
    if not keys or not store.exists("feedback") or not store.exists("features"):
        return 0
    import pyarrow.compute as pc

    fb = store.read("feedback")
    if "label" not in fb.schema.names or any(k not in fb.schema.names for k in keys):
        return 0
    fb = fb.filter(pc.and_(*[pc.is_valid(fb[k]) for k in keys]) if len(keys) > 1 else pc.is_valid(fb[keys[0]]))
    if fb.num_rows == 0:
        return 0
    latest = fb.sort_by([("received_at", "descending")]).to_pylist() if "received_at" in fb.schema.names else []
    if not latest:
        latest = fb.to_pylist()
    seen: dict[tuple[Any, ...], Any] = {}
    for row in latest:
        seen.setdefault(tuple(row[k] for k in keys), row["label"])
    target = project.config.model.target
    feats_schema = store.schema("features")
    if target not in feats_schema.names:
        return 0
    to_target = _caster(feats_schema.field(target).type, project.config.model.task)
    to_key = {k: _caster(feats_schema.field(k).type, None) for k in keys}
    bad: dict[str, int] = {}
    rows: list[tuple[tuple[Any, ...], Any]] = []
    for key, value in seen.items():
        try:
            typed_key = tuple(to_key[k](v) for k, v in zip(keys, key, strict=True))
        except _Uncastable as exc:
            bad[f"key {exc}"] = bad.get(f"key {exc}", 0) + 1
            continue
        try:
            rows.append((typed_key, to_target(value)))
        except _Uncastable as exc:
            bad[f"label {exc}"] = bad.get(f"label {exc}", 0) + 1
    if bad:
        shown = ", ".join(f"{what} ({n})" for what, n in sorted(bad.items(), key=lambda kv: -kv[1])[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        text = f"{sum(bad.values())} feedback label(s) could not be cast to the features table's types: {shown}{more}"
        logging.getLogger("loopline.loop").warning(text)
        if report is not None:
            report.append(text)
    if not rows:
        return 0
    labels = pa.table(
        {
            **{k: pa.array([key[i] for key, _ in rows], feats_schema.field(k).type) for i, k in enumerate(keys)},
            target: pa.array([v for _, v in rows], feats_schema.field(target).type),
        }
    )
    return store.update_matching("features", labels, keys, [target])


class _Uncastable(ValueError):
    """A feedback value that does not fit a features column (the message names value and type)."""


def _caster(typ: pa.DataType, task: str | None) -> Any:
    """value -> the Python value of Arrow type ``typ`` (labels parsed as the label contract does: ``"1"`` is 1,
    ``"true"`` is True); raises _Uncastable naming the value and the type."""
    from loopline.labels import LabelSpec, LabelValueError, kind_of_arrow

    kind = kind_of_arrow(typ, task or "classification")
    spec = LabelSpec(task or "classification", kind)

    def cast(value: Any) -> Any:
        if value is None:
            raise _Uncastable(f"null (type {typ})")
        try:
            parsed = spec.parse(value) if task is not None or kind in ("int", "bool") else value
            return pa.array([parsed]).cast(typ)[0].as_py()
        except (LabelValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
            raise _Uncastable(f"{value!r} (type {typ})") from None

    return cast


def loop(
    project: Project,
    *,
    window: timedelta | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    scheduled: bool = False,
    params: dict[str, Any] | None = None,
    time: str | None = None,
) -> LoopResult:
    """One turn of the loop; see the module docstring. ``scheduled`` = the schedule says retrain."""
    from loopline import registry, status, tracking
    from loopline.monitoring.monitor import monitor
    from loopline.tables import DeltaStore
    from loopline.training import train

    cfg = project.config.retraining
    store = DeltaStore(project.storage_root, project.storage_options)
    loop_id = uuid.uuid4().hex[:12]
    log = Decisions(store, loop_id)
    result = LoopResult(loop_id=loop_id, triggers=[], action="none")
    try:
        champion = tracking.alias_version(project, tracking.CHAMPION)
        result.champion_version = str(champion.version) if champion else None
        if champion is None:
            log.add("monitor", "skipped", ["no champion yet: training a first model"])
            result.triggers = ["bootstrap"]
        else:
            try:
                mres = monitor(project, window=window, since=since, until=until, time=time)
            except MonitoringError as exc:
                log.add("monitor", "failed", [exc.message])
                raise
            result.monitor = mres
            fired = triggers_of(mres)
            log.add(
                "monitor",
                mres.verdict,
                mres.breaches or [mres.message],
                report=mres.report_html,
                model_version=mres.model_version,
                monitoring_version=mres.table_version,
            )
            result.triggers = [t for t in fired if t in cfg.triggers]
            if scheduled and "schedule" in cfg.triggers:
                result.triggers.append("schedule")
            if "always" in cfg.triggers:
                result.triggers.append("always")
        if not result.triggers:
            log.add("retrain", "skipped", ["no enabled trigger fired"], enabled=cfg.triggers)
            result.action = "no action"
            return result
        flagged = status.needs_review(project)
        if flagged:
            log.add("retrain", "blocked", [f"environment needs human review: {flagged}"])
            result.action, result.exit_code = "blocked: needs review", EXIT_NEEDS_REVIEW
            return result
        _refresh_data(project, store, log, params)
        if champion is not None and cfg.min_new_labels > 0:
            fresh = new_labels(project, store)
            if fresh is not None and fresh < cfg.min_new_labels:
                why = (
                    f"{fresh} labelled row(s) arrived since champion v{champion.version} was trained "
                    f"(retraining.min_new_labels: {cfg.min_new_labels})"
                )
                log.add("retrain", "skipped", [why], new_labels=fresh)
                result.action = "no action: too few new labels"
                return result
        tr = train(project)
        result.candidate_version = tr.version
        log.add(
            "train",
            "ok",
            result.triggers,
            run_id=tr.run_id,
            version=tr.version,
            features_version=tr.features_version,
            metrics=tr.metrics,
        )
        gate = tr.gate
        log.add(
            "gate",
            gate.verdict,
            gate.failed_rules or gate.rules_checked,
            version=tr.version,
            champion_version=gate.champion_version,
            candidate=gate.candidate_metrics,
            champion=gate.champion_metrics,
        )
        if gate.passed:
            if not cfg.auto_promote:
                log.add("promote", "awaiting", ["retraining.auto_promote is false"], version=tr.version)
                result.action = f"v{tr.version} passed, awaiting promotion"
                return result
            event = registry.promote(project, tr.version, reason=f"loop {loop_id}: {', '.join(result.triggers)}")
            log.add("promote", "promoted", result.triggers, version=tr.version, previous=event.from_version)
            result.action, result.champion_version = f"promoted v{tr.version}", tr.version
            return result
        failures = consecutive_gate_failures(store, since=status.review_cleared_at(project)) + 1
        if failures >= cfg.max_gate_failures:
            reason = (
                f"{failures} candidates in a row failed the gate (last: v{tr.version}: "
                f"{_scores(gate.candidate_metrics, gate.champion_metrics, gate.champion_version)}; "
                f"{'; '.join(gate.failed_rules[:3])})"
            )
            status.set_needs_review(project, reason)
            log.add("review", "needs_review", [reason], version=tr.version)
            result.action, result.exit_code = "refused; needs review", EXIT_NEEDS_REVIEW
        else:
            log.add("promote", "refused", gate.failed_rules, version=tr.version, failures_in_a_row=failures)
            result.action, result.exit_code = f"v{tr.version} refused by the gate", EXIT_REFUSED
        return result
    except RegistryError as exc:
        log.add("loop", "failed", [exc.message])
        raise
    except LooplineError as exc:
        if not log.rows or log.rows[-1]["outcome"] != "failed":
            log.add("loop", "failed", [exc.message])
        raise
    finally:
        result.decisions = list(log.rows)
        log.flush()


def _scores(cand: dict[str, float], champ: dict[str, float], champ_version: str | None) -> str:
    """``mae 41.2 vs champion v3 44.0, rmse ...`` for the review reason."""
    parts = []
    for m, v in list(cand.items())[:3]:
        b = champ.get(m)
        vs = f" vs champion v{champ_version} {b:.4g}" if b is not None else ""
        parts.append(f"{m} {v:.4g}{vs}")
    return ", ".join(parts) or "no metrics"


def new_labels(project: Project, store: DeltaStore) -> int | None:
    """Labelled feature rows the champion has not trained on: after its training cutoff (event time), else
    beyond the number of rows it trained on; None when neither is known."""
    import pyarrow.compute as pc

    from loopline import tracking

    mv = tracking.alias_version(project, tracking.CHAMPION)
    if mv is None or not mv.run_id or not store.exists("features"):
        return None
    tags = tracking.client(project).get_run(mv.run_id).data.tags
    target, col = project.config.model.target, project.config.model.time_column
    until, trained = tags.get("loopline.trained_until"), tags.get("loopline.trained_rows")
    names = store.schema("features").names
    if target not in names:
        return None
    if until and col and col in names:
        t = store.read("features", columns=[target, col])
        cutoff = pa.scalar(datetime.fromisoformat(until)).cast(t.schema.field(col).type)
        mask = pc.and_(pc.is_valid(t[target]), pc.greater(t[col], cutoff))
        return int(pc.sum(mask.cast(pa.int64())).as_py() or 0)
    if trained:
        labelled = pc.sum(pc.is_valid(store.read("features", columns=[target])[target]).cast(pa.int64())).as_py()
        return max(0, int(labelled or 0) - int(trained))
    return None


def _refresh_data(project: Project, store: DeltaStore, log: Decisions, params: dict[str, Any] | None) -> None:
    """Ingest the retraining source (if configured) and fold feedback labels into the features."""
    source = project.config.retraining.source
    if source:
        from loopline.ingest import run_pipeline

        res = run_pipeline(project, source, params=params)
        log.add("ingest", "ok", [res.summary()], source=source)
    if project.config.retraining.use_feedback_labels:
        skipped: list[str] = []
        n = apply_feedback_labels(project, store, skipped)
        log.add("labels", "ok", [f"{n} feature rows labelled from feedback", *skipped], rows=n)


def loop_job(
    project: Project,
    window: timedelta | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    scheduled: bool = False,
    params: dict[str, Any] | None = None,
    time: str | None = None,
) -> LoopResult:
    """The `loop` job (``loopline loop``, ``loopline run loop`` and the scheduler)."""
    return loop(project, window=window, since=since, until=until, scheduled=scheduled, params=params, time=time)
