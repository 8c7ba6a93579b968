"""Drift statistics: correctness against scipy, method choice, column kinds, streaming, dataset share."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats
from scipy.spatial import distance

from loopline.config import ColumnMonitor, MonitoringConfig
from loopline.errors import MonitoringError
from loopline.monitoring.drift import (
    CategoricalSketch,
    NumericSketch,
    chi2_test,
    choose_method,
    compare_column,
    detect_drift,
    infer_kinds,
    js_distance,
    profile,
    psi,
    wasserstein_distance,
)


def sketch(values: np.ndarray, capacity: int = 100_000) -> NumericSketch:
    sk = NumericSketch(capacity=capacity)
    sk.update(np.asarray(values, dtype=np.float64), np.random.default_rng(0).random(len(values)), len(values))
    return sk


def batches(table: pa.Table, size: int) -> list[pa.RecordBatch]:
    return table.to_batches(max_chunksize=size)


# ----------------------------------------------------------------------------- statistics vs scipy
def test_ks_matches_scipy_exactly_on_small_samples() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(0.3, 1.0, size=200)
    got = compare_column("x", "numeric", sketch(a), sketch(b), small_sample=1000)
    want = stats.ks_2samp(a, b)
    assert got.statistic == "ks"
    assert got.value == pytest.approx(want.pvalue, rel=1e-12)
    assert got.score == pytest.approx(want.statistic, rel=1e-12)
    assert got.threshold == 0.05
    assert got.verdict == ("breach" if want.pvalue < 0.05 else "ok")


def test_ks_beyond_the_sample_uses_true_sizes_for_the_p_value() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=20_000), rng.normal(0.05, 1.0, size=20_000)
    got = compare_column("x", "numeric", sketch(a, 5_000), sketch(b, 5_000), small_sample=10**9)
    full = stats.ks_2samp(a, b, method="asymp")
    assert got.score == pytest.approx(full.statistic, abs=0.03)
    assert got.value == pytest.approx(stats.kstwo.sf(got.score, 10_000), rel=1e-9)


def test_wasserstein_matches_scipy_for_equal_and_unequal_sizes() -> None:
    rng = np.random.default_rng(3)
    a, b, c = rng.normal(size=1000), rng.normal(1, 2, size=1000), rng.exponential(size=377)
    assert wasserstein_distance(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-12)
    assert wasserstein_distance(a, c) == pytest.approx(stats.wasserstein_distance(a, c), rel=1e-12)


def test_wasserstein_is_normalised_by_the_reference_std() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 2, size=5000), rng.normal(1, 2, size=5000)
    got = compare_column("x", "numeric", sketch(a), sketch(b), small_sample=100)
    assert got.statistic == "wasserstein"
    assert got.value == pytest.approx(stats.wasserstein_distance(a, b) / np.std(a), rel=1e-9)
    assert got.verdict == "breach"  # about 0.5 >= 0.1


def test_chi2_matches_scipy_contingency() -> None:
    ref, cur = np.array([30.0, 50, 20]), np.array([10.0, 45, 45])
    stat, p = chi2_test(ref, cur)
    want = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert stat == pytest.approx(want.statistic)
    assert p == pytest.approx(want.pvalue)
    assert chi2_test(np.array([5.0]), np.array([7.0])) == (0.0, 1.0)


def test_js_distance_matches_scipy() -> None:
    ref, cur = np.array([10.0, 20, 0, 70]), np.array([25.0, 25, 25, 25])
    assert js_distance(ref, cur) == pytest.approx(distance.jensenshannon(ref / 100, cur / 100), rel=1e-12)
    assert js_distance(ref, ref) == 0.0


def test_psi_hand_checked() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi(np.array([50.0, 50]), np.array([25.0, 75])) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    # an empty bin is replaced by 1e-4 instead of dividing by zero
    want = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi(np.array([10.0, 0]), np.array([5.0, 5])) == pytest.approx(want)


def test_numeric_psi_uses_reference_deciles() -> None:
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 1, size=10_000)
    same = compare_column(
        "x", "numeric", sketch(a), sketch(rng.uniform(0, 1, size=10_000)), small_sample=1, method="psi"
    )
    moved = compare_column(
        "x",
        "numeric",
        sketch(a),
        sketch(rng.uniform(0.5, 1.5, size=10_000)),
        small_sample=1,
        method="psi",
        threshold=0.25,
    )
    assert same.statistic == "psi" and same.value < 0.01 and same.verdict == "ok"
    # half the current mass falls in the top reference decile, none in the bottom five
    assert moved.threshold == 0.25 and moved.value > 2 and moved.verdict == "breach"


# ----------------------------------------------------------------------------- method choice
@pytest.mark.parametrize(
    ("kind", "n_ref", "n_cur", "want"),
    [
        ("numeric", 5000, 999, "ks"),
        ("numeric", 999, 5000, "ks"),
        ("numeric", 1000, 1000, "wasserstein"),
        ("categorical", 5000, 10, "chi2"),
        ("boolean", 5000, 5000, "jensenshannon"),
        ("categorical", 10, 10, "chi2"),
    ],
)
def test_auto_method_from_kind_and_smaller_sample(kind: str, n_ref: int, n_cur: int, want: str) -> None:
    assert choose_method(kind, n_ref, n_cur, 1000) == want  # type: ignore[arg-type]
    assert choose_method(kind, n_ref, n_cur, 1000, "psi") == "psi"  # type: ignore[arg-type]


def test_method_and_threshold_per_column_from_config() -> None:
    ref = pa.table({"a": np.arange(2000, dtype=float), "b": np.arange(2000, dtype=float)})
    cur = pa.table({"a": np.arange(2000, dtype=float) + 100, "b": np.arange(2000, dtype=float)})
    kinds, _ = infer_kinds(ref.schema, ["a", "b"])
    cfg = MonitoringConfig(columns={"a": ColumnMonitor(method="psi", threshold=0.5), "b": ColumnMonitor(method="ks")})
    rep = detect_drift(batches(ref, 500), batches(cur, 500), kinds, cfg)
    by = {f.feature: f for f in rep.features}
    assert (by["a"].statistic, by["a"].threshold) == ("psi", 0.5)
    assert (by["b"].statistic, by["b"].threshold, by["b"].verdict) == ("ks", 0.05, "ok")


def test_numeric_only_method_on_a_categorical_column_is_refused() -> None:
    ref = pa.table({"color": ["red", "blue"] * 10})
    kinds, _ = infer_kinds(ref.schema, ["color"])
    cfg = MonitoringConfig(columns={"color": ColumnMonitor(method="wasserstein")})
    with pytest.raises(MonitoringError, match=r"monitoring.columns.color.method 'wasserstein' needs a numeric column"):
        detect_drift(batches(ref, 5), batches(ref, 5), kinds, cfg)


def test_unknown_column_in_config_is_refused() -> None:
    ref = pa.table({"x": [1.0, 2.0]})
    kinds, _ = infer_kinds(ref.schema, ["x"])
    cfg = MonitoringConfig(columns={"nope": ColumnMonitor(method="psi")})
    with pytest.raises(MonitoringError, match=r"monitoring.columns.nope: no monitored column 'nope'"):
        detect_drift(batches(ref, 5), batches(ref, 5), kinds, cfg)


def test_text_in_a_numeric_column_is_refused() -> None:
    ref = pa.table({"x": [1.0, 2.0, 3.0]})
    kinds, _ = infer_kinds(ref.schema, ["x"])
    with pytest.raises(MonitoringError, match=r"column 'x' is numeric in the reference but string"):
        detect_drift(batches(ref, 5), [pa.record_batch({"x": ["a", "b"]})], kinds, MonitoringConfig())


# ----------------------------------------------------------------------------- kinds and edge cases
def test_kinds_from_the_schema() -> None:
    schema = pa.schema(
        [
            ("i", pa.int32()),
            ("f", pa.float32()),
            ("s", pa.string()),
            ("d", pa.dictionary(pa.int8(), pa.string())),
            ("b", pa.bool_()),
            ("n", pa.null()),
            ("t", pa.timestamp("us")),
        ]
    )
    kinds, skipped = infer_kinds(schema, ["i", "f", "s", "d", "b", "n", "t", "missing"])
    assert kinds == {
        "i": "numeric",
        "f": "numeric",
        "s": "categorical",
        "d": "categorical",
        "b": "boolean",
        "n": "null",
    }
    assert skipped == {"t": "type timestamp[us] is not monitored", "missing": "not in the reference table"}


def test_categorical_string_and_dictionary_give_the_same_result() -> None:
    rng = np.random.default_rng(6)
    ref_vals = rng.choice(["a", "b", "c"], size=3000, p=[0.5, 0.3, 0.2]).tolist()
    cur_vals = [*rng.choice(["a", "b", "c", "d"], size=3000, p=[0.2, 0.3, 0.3, 0.2]).tolist(), None]
    ref = pa.table({"c": ref_vals})
    plain = pa.table({"c": pa.array(cur_vals)})
    dic = pa.table({"c": pa.array(cur_vals).dictionary_encode()})
    kinds, _ = infer_kinds(ref.schema, ["c"])
    cfg = MonitoringConfig()
    r1 = detect_drift(batches(ref, 700), batches(plain, 700), kinds, cfg).features[0]
    r2 = detect_drift(batches(ref, 700), batches(dic, 700), kinds, cfg).features[0]
    counts = np.array([ref_vals.count(k) for k in "abcd"], dtype=float)
    want = distance.jensenshannon(
        counts / counts.sum(), np.array([cur_vals.count(k) for k in "abcd"]) / (len(cur_vals) - 1)
    )
    assert r1.statistic == r2.statistic == "jensenshannon"
    assert r1.value == pytest.approx(want) and r2.value == pytest.approx(want)
    assert r1.verdict == "breach" and r1.n_current == 3000


def test_boolean_columns_use_chi2_on_small_samples() -> None:
    ref = pa.table({"flag": [True] * 80 + [False] * 20})
    cur = pa.table({"flag": [True] * 40 + [False] * 60 + [None] * 5})
    kinds, _ = infer_kinds(ref.schema, ["flag"])
    got = detect_drift(batches(ref, 30), batches(cur, 30), kinds, MonitoringConfig()).features[0]
    want = stats.chi2_contingency(np.array([[20, 80], [60, 40]]), correction=False)
    assert (got.kind, got.statistic) == ("boolean", "chi2")
    assert got.value == pytest.approx(want.pvalue) and got.verdict == "breach"
    assert set(got.plot["categories"]) == {"true", "false"}


def test_all_null_columns() -> None:
    ref = pa.table({"n": pa.nulls(50), "x": pa.array([1.0] * 50), "gone": pa.array(np.arange(50.0))})
    cur = pa.table({"n": pa.nulls(20), "x": pa.array([None] * 20, pa.float64()), "gone": pa.array(np.arange(20.0))})
    cur = cur.drop_columns(["gone"])
    kinds, _ = infer_kinds(ref.schema, ["n", "x", "gone"])
    rep = detect_drift(batches(ref, 7), batches(cur, 7), kinds, MonitoringConfig())
    by = {f.feature: f for f in rep.features}
    assert by["n"].verdict == "no_data" and "null in the reference and in the current" in by["n"].detail
    assert (by["x"].statistic, by["x"].verdict, by["x"].value, by["x"].threshold) == ("null_share", "breach", 1.0, 0.0)
    assert by["gone"].verdict == "breach"  # a column missing from production is all null there
    assert rep.share == 1.0 and rep.verdict == "breach"  # "n" does not count towards the share


def test_constant_reference_does_not_divide_by_zero() -> None:
    got = compare_column("x", "numeric", sketch(np.ones(5000)), sketch(np.ones(5000) * 1.01), small_sample=10)
    assert got.value == pytest.approx(0.01 / 1e-3) and got.verdict == "breach"


def test_empty_window_is_no_data_not_a_crash() -> None:
    ref = pa.table({"x": np.arange(100.0), "c": ["a", "b"] * 50})
    kinds, _ = infer_kinds(ref.schema, ["x", "c"])
    empty = pa.table({"x": pa.array([], pa.float64()), "c": pa.array([], pa.string())})
    for current in ([], batches(empty, 10)):
        rep = detect_drift(batches(ref, 10), current, kinds, MonitoringConfig())
        assert rep.verdict == "no_data" and math.isnan(rep.share)
        assert {f.verdict for f in rep.features} == {"no_data"}
        assert rep.features[0].detail == "no rows in the current window"
        assert rep.to_dict()["share"] is None


# ----------------------------------------------------------------------------- streaming and dataset drift
def test_many_small_batches_equal_one_batch() -> None:
    rng = np.random.default_rng(7)
    n = 6000
    ref = pa.table(
        {"x": rng.normal(size=n), "c": rng.choice(["a", "b", "c"], size=n).tolist(), "b": rng.random(n) < 0.3}
    )
    cur = pa.table(
        {"x": rng.normal(0.2, 1, size=n), "c": rng.choice(["a", "b"], size=n).tolist(), "b": rng.random(n) < 0.35}
    )
    kinds, _ = infer_kinds(ref.schema, ref.schema.names)
    cfg = MonitoringConfig(small_sample=100)
    for size in (n, 97):
        one = detect_drift(batches(ref, n), batches(cur, n), kinds, cfg, sample_size=1500)
        many = detect_drift(batches(ref, size), batches(cur, 61), kinds, cfg, sample_size=1500)
        assert [(f.feature, f.statistic, f.value, f.verdict) for f in one.features] == [
            (f.feature, f.statistic, f.value, f.verdict) for f in many.features
        ]
    # moments are exact whatever the sample size
    p = profile(batches(ref, 13), kinds, sample_size=10)
    x = p.sketches["x"]
    assert isinstance(x, NumericSketch)
    assert x.sample.size == 10 and x.count == n
    assert x.mean == pytest.approx(float(np.mean(ref["x"]))) and x.std == pytest.approx(float(np.std(ref["x"])))
    c = p.sketches["c"]
    assert isinstance(c, CategoricalSketch) and sum(c.counts.values()) == n


def test_dataset_drift_is_the_share_of_drifted_features() -> None:
    rng = np.random.default_rng(8)
    n = 3000
    ref = pa.table({f"f{i}": rng.normal(size=n) for i in range(4)})
    cur = pa.table({f"f{i}": rng.normal(size=n) * (1.3 if i < 2 else 1) + (0.5 if i < 2 else 0) for i in range(4)})
    kinds, _ = infer_kinds(ref.schema, ref.schema.names)
    at_half = detect_drift(batches(ref, 1000), batches(cur, 1000), kinds, MonitoringConfig(drift_share=0.5))
    assert at_half.drifted == ["f0", "f1"] and at_half.share == 0.5 and at_half.verdict == "breach"
    above = detect_drift(batches(ref, 1000), batches(cur, 1000), kinds, MonitoringConfig(drift_share=0.6))
    assert above.verdict == "ok"
