"""Prometheus metrics of the server (``GET /metrics``).

A server of one process keeps its metrics in memory. ``loopline serve`` with ``--workers N`` or with
the prediction log's committer process sets ``PROMETHEUS_MULTIPROC_DIR`` before its processes start,
every process writes its values there, and ``/metrics`` on any worker aggregates all of them
(prometheus_client multiprocess mode): counters and histograms are summed; gauges are reported per
process (``pid`` label) or summed / maxed as noted. The committer process has only the log's metrics.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_PRED_BUCKETS = (-1e4, -1e3, -100.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0, 1e3, 1e4)
_PROBA_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_MAX_CLASSES = 50
_MAX_PENDING = 10_000
SYNC_SECONDS = 1.0  # request and prediction counts reach the metrics at least this often


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class LogMetrics:
    """The prediction log's metrics: all a committer process has (it serves no requests)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.buffer_rows = Gauge(
            "loopline_log_buffer_rows",
            "Prediction-log rows waiting in memory.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.flushed = Counter(
            "loopline_log_rows_flushed", "Prediction-log rows committed to inference_log.", registry=r
        )
        self.flushes = Counter("loopline_log_flushes", "Prediction-log commits to inference_log.", registry=r)
        self.compactions = Counter(
            "loopline_log_compactions", "inference_log compactions (small files rewritten).", registry=r
        )
        self.flush_failures = Counter(
            "loopline_log_flush_failures", "Failed inference_log writes (rows spilled).", registry=r
        )
        self.spilled = Counter(
            "loopline_log_rows_spilled", "Prediction-log rows written to the local spill folder.", registry=r
        )
        self.staged = Counter(
            "loopline_log_rows_staged",
            "Prediction-log rows a worker left in the spill folder for the committer.",
            registry=r,
        )
        self.overflows = Counter(
            "loopline_log_buffer_overflows",
            "Times the in-memory buffer passed serving.log.max_buffer_rows.",
            registry=r,
        )
        self.spill_pending = Gauge(
            "loopline_log_spill_files",
            "Spill-folder files waiting for a commit.",
            registry=r,
            multiprocess_mode="livemax",
        )


class Metrics(LogMetrics):
    """Everything a worker reports."""

    def __init__(self, prediction_range: tuple[float, float] | None = None, task: str = "regression") -> None:
        from prometheus_client import Counter, Gauge, Histogram

        super().__init__()
        r = self.registry
        self.range = prediction_range
        self.classifier = task == "classification"
        self.requests = Counter(
            "loopline_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "loopline_request_latency_seconds",
            "Request latency by endpoint (server side).",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        buckets: tuple[float, ...] = _PRED_BUCKETS
        if prediction_range is not None:
            lo, hi = prediction_range
            buckets = tuple(float(x) for x in np.unique(np.linspace(lo, hi, 11))) if hi > lo else (float(lo),)
        self.predictions: Any = None
        self.probability: Any = None
        if self.classifier:
            self.probability = Histogram(
                "loopline_prediction_probability",
                "The probability kept with each prediction (classification): P(positive class) of a binary "
                "model, else P(predicted class).",
                buckets=_PROBA_BUCKETS,
                registry=r,
            )
        else:
            self.predictions = Histogram(
                "loopline_prediction_value", "Predicted values (regression).", buckets=buckets, registry=r
            )
        self.classes = Counter(
            "loopline_predictions_by_class", "Predicted classes (classification).", ["label"], registry=r
        )
        self.rows = Counter("loopline_predicted_rows", "Rows predicted.", registry=r)
        self.range_violations = Counter(
            "loopline_range_violations",
            "Predictions outside gate.prediction_range (classifiers: their probability).",
            registry=r,
        )
        self.info = Gauge(
            "loopline_model_info",
            "The served model version (value 1).",
            ["model", "version", "run_id"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.ready = Gauge("loopline_model_ready", "1 when a model is loaded.", registry=r, multiprocess_mode="liveall")
        self.reloads = Counter(
            "loopline_model_reloads", "Champion reloads by result (ok, failed).", ["result"], registry=r
        )
        self.feedback = Counter(
            "loopline_feedback_rows", "Feedback rows by whether the request id was known.", ["known"], registry=r
        )
        self.monitoring = Gauge(
            "loopline_monitoring_verdict",
            "Latest `loopline monitor` verdict per check kind: 1 breach, 0 ok, -1 no data.",
            ["kind"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.monitoring_checked = Gauge(
            "loopline_monitoring_checked_timestamp_seconds",
            "When the latest monitoring check ran (Unix time).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._requests: list[tuple[str, int, float]] = []  # counted since the last sync
        self._preds: list[np.ndarray] = []
        self._probability: list[np.ndarray] = []
        self._classes: set[str] = set()
        self._info_labels: tuple[str, str, str] | None = None

    # ------------------------------------------------------------------ hot path (batched)
    def request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one request: a list append; ``sync`` applies the batch (a counter or histogram update
        costs 1-5 µs each, twice that in multiprocess mode: ~15 µs of a ~450 µs request)."""
        self._requests.append((endpoint, status, seconds))
        if len(self._requests) >= _MAX_PENDING:  # no sync task (an app without its lifespan)
            self.sync()

    def observe_predictions(self, preds: np.ndarray, probability: np.ndarray | None = None) -> None:
        """Count one request's predictions (and, classifiers, their ``probability``)."""
        self._preds.append(preds)
        if probability is not None:
            self._probability.append(probability)
        if len(self._preds) >= _MAX_PENDING:
            self.sync()

    def sync(self) -> None:
        """Apply the requests and predictions counted since the last call, one update per counter,
        label set and histogram bucket. The server calls it every ``SYNC_SECONDS`` and before it renders
        ``/metrics``; call it from the event loop's thread (where requests are counted)."""
        requests, self._requests = self._requests, []
        preds, self._preds = self._preds, []
        probability, self._probability = self._probability, []
        if requests:
            self._sync_requests(requests)
        if preds and self.classifier:
            self._sync_classes(preds, probability)
        elif preds:
            self._sync_predictions(preds)

    def _sync_requests(self, requests: list[tuple[str, int, float]]) -> None:
        counts = collections.Counter((endpoint, status) for endpoint, status, _ in requests)
        for (endpoint, status), n in counts.items():
            self.requests.labels(endpoint, str(status)).inc(n)
        seconds: dict[str, list[float]] = {}
        for endpoint, _, secs in requests:
            seconds.setdefault(endpoint, []).append(secs)
        for endpoint, values in seconds.items():
            _observe_many(self.latency.labels(endpoint), np.asarray(values, dtype=np.float64))

    def _sync_predictions(self, preds: list[np.ndarray]) -> None:
        numeric = [p for p in preds if p.ndim == 1 and p.dtype.kind in "fiub"]
        self.rows.inc(sum(int(p.shape[0]) if p.ndim else 1 for p in preds))
        if numeric:
            values = np.concatenate(numeric).astype(np.float64)
            _observe_many(self.predictions, values)
            self._out_of_range(values)
        for p in preds:
            if p.ndim != 1 or p.dtype.kind in "fiub":
                continue
            labels, counts = np.unique(np.asarray([str(v)[:64] for v in p.tolist()[:1000]]), return_counts=True)
            self._count_classes(dict(zip(labels.tolist(), counts.tolist(), strict=True)))

    def _sync_classes(self, preds: list[np.ndarray], probability: list[np.ndarray]) -> None:
        """Classifiers: rows, rows per predicted class, the probability histogram and its range violations."""
        self.rows.inc(sum(int(p.shape[0]) if p.ndim else 1 for p in preds))
        counts: collections.Counter[Any] = collections.Counter()
        for p in preds:
            counts.update(p.reshape(-1).tolist())
        by_text: dict[str, int] = {}
        for label, n in counts.items():
            text = label_text(label)
            by_text[text] = by_text.get(text, 0) + n
        self._count_classes(by_text)
        if probability:
            values = np.concatenate(probability).astype(np.float64, copy=False)
            _observe_many(self.probability, values)
            self._out_of_range(values)

    def _count_classes(self, counts: dict[str, int]) -> None:
        for label, n in counts.items():
            if label in self._classes or len(self._classes) < _MAX_CLASSES:
                self._classes.add(label)
                self.classes.labels(label).inc(n)

    def _out_of_range(self, values: np.ndarray) -> None:
        if self.range is None:
            return
        lo, hi = self.range
        bad = int(np.count_nonzero((values < lo) | (values > hi)))
        if bad:
            self.range_violations.inc(bad)

    # ------------------------------------------------------------------ events
    def reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "failed").inc()

    def model_info(self, model: str, version: str, run_id: str, old: str | None) -> None:
        if self._info_labels is not None:
            self.info.labels(*self._info_labels).set(0)  # 0 = no longer served (multiprocess-safe)
        self._info_labels = (model, version, run_id)
        self.info.labels(model, version, run_id).set(1)
        self.ready.set(1)

    def set_monitoring(self, verdicts: dict[str, Any]) -> None:
        """Gauges from `loopline.monitoring.latest_verdicts` (the newest row set of the monitoring table)."""
        from datetime import datetime

        values = {"breach": 1.0, "ok": 0.0, "no_data": -1.0}
        for kind, verdict in verdicts.get("kinds", {}).items():
            self.monitoring.labels(kind).set(values.get(verdict, -1.0))
        if verdicts.get("verdict") is not None:
            self.monitoring.labels("overall").set(values.get(verdicts["verdict"], -1.0))
        if verdicts.get("checked_at"):
            self.monitoring_checked.set(datetime.fromisoformat(verdicts["checked_at"]).timestamp())

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        self.sync()
        if multiprocess_dir():
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def label_text(label: Any) -> str:
    """A class as a Prometheus label value (booleans as in JSON: true / false)."""
    if isinstance(label, (bool, np.bool_)):
        return "true" if label else "false"
    return str(label)[:64]


def _observe_many(hist: Any, values: np.ndarray) -> None:
    """``hist.observe(v)`` for every value, with one update per bucket: prometheus_client has no bulk
    observe, so this uses its histogram's bucket list (falls back to one observe per value)."""
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values.tolist():
            hist.observe(v)
        return
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")  # first bound >= v
    counts = np.bincount(idx, minlength=len(bounds) + 1)  # NaN sorts past the last bound: in no bucket
    for i, n in enumerate(counts[: len(bounds)].tolist()):
        if n:
            buckets[i].inc(n)
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN sum as they would one by one
        total.inc(float(values.sum()))


def mark_process_dead(pid: int) -> None:
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
