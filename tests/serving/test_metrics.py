"""Batched metric updates (serving/metrics.py) give exactly what one update per request gives."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from loopline.serving.metrics import Metrics, _observe_many


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in registry.collect()
        for s in fam.samples
        if not s.name.endswith("_created")
    }


def test_bulk_observe_equals_one_observe_per_value() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 300, 500), [0.0, 1.0, 10.0, -1e4, 1e9, math.inf, 5.5]])
    one, bulk = CollectorRegistry(), CollectorRegistry()
    buckets = (-1e4, -100.0, 0.0, 1.0, 10.0, 1e3)
    h1 = Histogram("v", "v", buckets=buckets, registry=one)
    h2 = Histogram("v", "v", buckets=buckets, registry=bulk)
    for v in values.tolist():
        h1.observe(v)
    _observe_many(h2, values[:100])
    _observe_many(h2, values[100:])
    assert _samples(one) == _samples(bulk)


def test_requests_and_predictions_reach_the_metrics_at_sync() -> None:
    m = Metrics(prediction_range=(0.0, 100.0))
    for i in range(30):
        m.request("invocations", 200 if i % 3 else 400, 0.001 * i)
        m.observe_predictions(np.array([float(i), 150.0]))
    m.observe_predictions(np.array(["a", "b", "a"], dtype=object))
    text = generate_latest(m.registry).decode()
    assert 'loopline_requests_total{endpoint="invocations",status="200"}' not in text  # not synced yet
    m.sync()
    s = _samples(m.registry)
    assert s[("loopline_requests_total", (("endpoint", "invocations"), ("status", "200")))] == 20
    assert s[("loopline_requests_total", (("endpoint", "invocations"), ("status", "400")))] == 10
    assert s[("loopline_request_latency_seconds_count", (("endpoint", "invocations"),))] == 30
    assert math.isclose(s[("loopline_request_latency_seconds_sum", (("endpoint", "invocations"),))], 0.435)
    assert s[("loopline_predicted_rows_total", ())] == 63
    assert s[("loopline_prediction_value_count", ())] == 60
    assert s[("loopline_range_violations_total", ())] == 30  # the 150s
    assert s[("loopline_predictions_by_class_total", (("label", "a"),))] == 2
    body, _ = m.render()  # rendering syncs first
    m.request("feedback", 200, 0.01)
    assert b'endpoint="feedback"' in m.render()[0] and b'endpoint="feedback"' not in body
