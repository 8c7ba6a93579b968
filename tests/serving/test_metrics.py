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


def test_classifier_metrics_count_classes_and_probabilities() -> None:
    """Classifiers: rows per predicted class (the label as text), the probability histogram, and range violations
    of the probability (gate.prediction_range is a probability range for a classifier)."""
    m = Metrics(prediction_range=(0.1, 0.9), task="classification")
    m.observe_predictions(np.array([True, False, True]), np.array([0.95, 0.5, 0.6]))
    m.observe_predictions(np.array([True]), np.array([0.05]))
    m.sync()
    s = _samples(m.registry)
    assert s[("loopline_predictions_by_class_total", (("label", "true"),))] == 3
    assert s[("loopline_predictions_by_class_total", (("label", "false"),))] == 1
    assert s[("loopline_predicted_rows_total", ())] == 4
    assert s[("loopline_prediction_probability_count", ())] == 4
    assert s[("loopline_prediction_probability_bucket", (("le", "0.5"),))] == 2
    assert s[("loopline_range_violations_total", ())] == 2  # 0.95 and 0.05
    assert not any(name.startswith("loopline_prediction_value") for name, _ in s)
    text = Metrics(task="classification")
    text.observe_predictions(np.array(["a b/c", "beta", "a b/c"], dtype=object), np.array([0.5, 0.6, 0.7]))
    text.observe_predictions(np.array([7, 7]), None)  # no probabilities (a model without predict_proba)
    text.sync()
    s = _samples(text.registry)
    assert s[("loopline_predictions_by_class_total", (("label", "a b/c"),))] == 2
    assert s[("loopline_predictions_by_class_total", (("label", "7"),))] == 2
    assert s[("loopline_prediction_probability_count", ())] == 3
