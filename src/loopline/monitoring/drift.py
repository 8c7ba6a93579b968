"""Drift statistics between two streaming profiles (:mod:`.sketch`): one statistic per column.

The statistic is chosen once per column from the reference schema and the sample size, or set by
``monitoring.columns.<name>.method`` (with its ``threshold``):

=================  ==========================  ==========================  ================
kind               small (fewer than           large                       drift when
                   ``small_sample`` values)
=================  ==========================  ==========================  ================
numeric            ``ks`` (p-value)            ``wasserstein`` / ref. std  p < 0.05 / >= 0.1
categorical, bool  ``chi2`` (p-value)          ``jensenshannon``           p < 0.05 / >= 0.1
any (opt-in)       ``psi``                     ``psi``                     >= 0.2
=================  ==========================  ==========================  ================

"small" means the smaller of the two samples (non-null values) has fewer than ``small_sample``
values. KS and Wasserstein are exact while both sides fit in the sample (``sample_size``), and
estimated from the uniform samples beyond that. Binned statistics on numeric columns (psi,
jensenshannon, chi2) use the reference's decile bins: exact counts on the current side, the
reference's from its sample. The large-sample path is numpy only; scipy (KS, chi-squared) is imported
inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from loopline.errors import MonitoringError
from loopline.monitoring.sketch import (
    DEFAULT_SAMPLE_SIZE,
    EXCLUDED,
    PSI_BINS,
    CategoricalSketch,
    Kind,
    NumericSketch,
    Profile,
    Profiler,
    Sketch,
    column_kind,
    infer_kinds,
    profile,
)

if TYPE_CHECKING:
    from loopline.config import MonitoringConfig

__all__ = [
    "DEFAULT_SAMPLE_SIZE",
    "CategoricalSketch",
    "DriftReport",
    "FeatureDrift",
    "Kind",
    "NumericSketch",
    "Profile",
    "Profiler",
    "column_kind",
    "compare",
    "compare_column",
    "detect_drift",
    "infer_kinds",
    "profile",
]

Verdict = Literal["ok", "breach", "no_data"]
METHODS = ("ks", "chi2", "wasserstein", "jensenshannon", "psi")
P_VALUE_METHODS = ("ks", "chi2")
DEFAULT_THRESHOLDS: dict[str, float] = {
    "ks": 0.05,
    "chi2": 0.05,
    "wasserstein": 0.1,
    "jensenshannon": 0.1,
    "psi": 0.2,
}
NUMERIC_ONLY = ("ks", "wasserstein")
PSI_EPS = 1e-4
MIN_STD = 1e-3
PLOT_BINS = 30
PLOT_CATEGORIES = 20


# ----------------------------------------------------------------------------- statistics
def ks_test(ref: NumericSketch, cur: NumericSketch) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: (D statistic, p-value).

    Exactly scipy's ``ks_2samp`` when both samples hold every value; otherwise D from the uniform
    samples and the asymptotic p-value for the true sizes.
    """
    from scipy import stats

    if ref.exact and cur.exact:
        res = stats.ks_2samp(ref.sample, cur.sample)
        return float(res.statistic), float(res.pvalue)
    d = float(stats.ks_2samp(ref.sample, cur.sample, method="asymp").statistic)
    en = ref.count * cur.count / (ref.count + cur.count)
    return d, float(stats.kstwo.sf(d, round(en)))


def wasserstein_distance(u: np.ndarray, v: np.ndarray) -> float:
    """Wasserstein-1 distance of two 1-D samples (what ``scipy.stats.wasserstein_distance`` computes).

    numpy only, on sorted values: the mean absolute difference of the order statistics when the sizes
    are equal, else the integral of the absolute difference of the two empirical CDFs.
    """
    su, sv = np.sort(u), np.sort(v)
    if su.size == sv.size:
        return float(np.abs(su - sv).mean())
    both = np.sort(np.concatenate([su, sv]))
    deltas = np.diff(both)
    cu = np.searchsorted(su, both[:-1], side="right") / su.size
    cv = np.searchsorted(sv, both[:-1], side="right") / sv.size
    return float(np.sum(np.abs(cu - cv) * deltas))


def wasserstein_normed(ref: NumericSketch, cur: NumericSketch) -> float:
    """Wasserstein-1 distance divided by the reference's standard deviation (at least 0.001)."""
    return wasserstein_distance(ref.sample, cur.sample) / max(ref.std, MIN_STD)


def chi2_test(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Chi-squared test of homogeneity on a 2 x k table of counts: (statistic, p-value)."""
    from scipy import stats

    table = np.vstack([ref_counts, cur_counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    res = stats.chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue)


def js_distance(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Jensen-Shannon distance, natural log (0 .. sqrt(ln 2)); as ``scipy.spatial.distance.jensenshannon``."""
    p = ref_counts / ref_counts.sum()
    q = cur_counts / cur_counts.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))

    return math.sqrt(max((kl(p) + kl(q)) / 2, 0.0))


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray, eps: float = PSI_EPS) -> float:
    """Population stability index: sum((q - p) * ln(q / p)), empty shares replaced by ``eps``."""
    p = ref_counts / ref_counts.sum()
    q = cur_counts / cur_counts.sum()
    p = np.where(p == 0, eps, p)
    q = np.where(q == 0, eps, q)
    return float(np.sum((q - p) * np.log(q / p)))


# ----------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class FeatureDrift:
    """The drift verdict of one column.

    ``value`` is the p-value for ``ks`` / ``chi2`` (drift when below ``threshold``) and the distance
    for ``wasserstein`` / ``jensenshannon`` / ``psi`` (drift when at or above ``threshold``).
    ``statistic`` is ``null_share`` when one side has values and the other none (value: current null
    share, threshold: reference null share).
    """

    feature: str
    kind: str
    statistic: str
    value: float
    threshold: float
    verdict: Verdict
    n_reference: int
    n_current: int
    detail: str = ""
    score: float | None = None
    plot: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    excluded: int = 0  # current-window values left out, counted (sketch.EXCLUDED: infinite, too large)
    excluded_reference: int = 0

    @property
    def drifted(self) -> bool:
        return self.verdict == "breach"

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "kind": self.kind,
            "statistic": self.statistic,
            "value": _json_float(self.value),
            "threshold": _json_float(self.threshold),
            "verdict": self.verdict,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "detail": self.detail,
            "score": _json_float(self.score),
            "excluded": self.excluded,
            "excluded_reference": self.excluded_reference,
            "plot": self.plot,
        }


@dataclass(frozen=True)
class DriftReport:
    """Per-column results plus the dataset verdict (share of drifted columns vs ``drift_share``)."""

    features: list[FeatureDrift]
    drift_share: float
    share: float
    verdict: Verdict
    n_reference: int
    n_current: int
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def excluded(self) -> dict[str, int]:
        """Current-window values each column left out of its statistic (infinite or too large), when any."""
        return {f.feature: f.excluded for f in self.features if f.excluded}

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "share": _json_float(self.share),
            "drift_share": self.drift_share,
            "drifted": self.drifted,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "skipped": self.skipped,
            "excluded": self.excluded,
            "features": [f.to_dict() for f in self.features],
        }


def _json_float(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def choose_method(kind: Kind, n_reference: int, n_current: int, small_sample: int, requested: str = "auto") -> str:
    """The statistic for one column: the requested one, else by kind and the smaller sample size."""
    if requested != "auto":
        return requested
    small = min(n_reference, n_current) < small_sample
    if kind == "numeric":
        return "ks" if small else "wasserstein"
    return "chi2" if small else "jensenshannon"


def _check_method(name: str, kind: Kind, method: str) -> None:
    if method not in (*METHODS, "auto"):
        raise MonitoringError(
            f"monitoring.columns.{name}.method must be one of auto, {', '.join(METHODS)}; got {method!r}"
        )
    if method in NUMERIC_ONLY and kind in ("categorical", "boolean"):
        raise MonitoringError(
            f"monitoring.columns.{name}.method {method!r} needs a numeric column, but {name!r} is {kind}",
            hint="use chi2, jensenshannon or psi for categorical and boolean columns",
        )


def _binned(ref: Sketch, cur: Sketch) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current counts over the same bins (categories, or reference deciles)."""
    if isinstance(ref, CategoricalSketch) and isinstance(cur, CategoricalSketch):
        cats = sorted(set(ref.counts) | set(cur.counts))
        return (
            np.array([ref.counts.get(c, 0) for c in cats], dtype=np.float64),
            np.array([cur.counts.get(c, 0) for c in cats], dtype=np.float64),
        )
    assert isinstance(ref, NumericSketch) and isinstance(cur, NumericSketch)
    edges = np.unique(np.quantile(ref.sample, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
    nb = edges.size + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref.sample, side="right"), minlength=nb).astype(np.float64)
    if cur.edges is not None and cur.hist is not None and np.array_equal(cur.edges, edges):
        cur_counts = cur.hist.astype(np.float64)
    else:
        cur_counts = np.bincount(np.searchsorted(edges, cur.sample, side="right"), minlength=nb).astype(np.float64)
    return ref_counts, cur_counts


def _plot(ref: Sketch, cur: Sketch) -> dict[str, Any]:
    """Small, JSON-able distribution summaries for the report."""
    if isinstance(ref, NumericSketch) and isinstance(cur, NumericSketch):
        both = np.concatenate([ref.sample, cur.sample])
        if both.size == 0:
            return {}
        lo, hi = (float(x) for x in np.quantile(both, [0.005, 0.995]))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, PLOT_BINS + 1)

        def shares(s: np.ndarray) -> list[float]:
            h = np.histogram(np.clip(s, lo, hi), bins=edges)[0].astype(np.float64)
            return (h / max(h.sum(), 1)).round(6).tolist()

        return {
            "type": "hist",
            "edges": edges.round(6).tolist(),
            "reference": shares(ref.sample),
            "current": shares(cur.sample),
        }
    if isinstance(ref, CategoricalSketch) and isinstance(cur, CategoricalSketch):
        total = {c: ref.counts.get(c, 0) + cur.counts.get(c, 0) for c in set(ref.counts) | set(cur.counts)}
        cats = sorted(total, key=lambda c: (-total[c], c))[:PLOT_CATEGORIES]
        rn, cn = max(ref.count, 1), max(cur.count, 1)
        return {
            "type": "bar",
            "categories": cats,
            "reference": [round(ref.counts.get(c, 0) / rn, 6) for c in cats],
            "current": [round(cur.counts.get(c, 0) / cn, 6) for c in cats],
        }
    return {}


def compare_column(
    name: str,
    kind: Kind,
    ref: Sketch,
    cur: Sketch,
    *,
    small_sample: int,
    method: str = "auto",
    threshold: float | None = None,
) -> FeatureDrift:
    """Drift of one column between two sketches; values the sketches excluded are counted in the result
    and named in its detail."""
    result = _compare_column(name, kind, ref, cur, small_sample=small_sample, method=method, threshold=threshold)
    out = getattr(cur, "excluded", 0)
    out_ref = getattr(ref, "excluded", 0)
    if not (out or out_ref):
        return result
    said = [f"{n} {side} value(s) excluded" for n, side in ((out, "current"), (out_ref, "reference")) if n]
    detail = f"{result.detail}; {', '.join(said)} ({EXCLUDED})"
    return replace(result, excluded=out, excluded_reference=out_ref, detail=detail)


def _compare_column(
    name: str,
    kind: Kind,
    ref: Sketch,
    cur: Sketch,
    *,
    small_sample: int,
    method: str = "auto",
    threshold: float | None = None,
) -> FeatureDrift:
    _check_method(name, kind, method)
    n_ref, n_cur = ref.count, cur.count
    base: dict[str, Any] = {"feature": name, "kind": kind, "n_reference": n_ref, "n_current": n_cur}
    if cur.rows == 0:
        chosen = choose_method(kind, n_ref, n_cur, small_sample, method)
        return FeatureDrift(
            statistic=chosen,
            value=math.nan,
            threshold=math.nan,
            verdict="no_data",
            detail="no rows in the current window",
            **base,
        )
    if n_ref == 0 or n_cur == 0:
        ref_null = ref.nulls / ref.rows if ref.rows else 1.0
        cur_null = cur.nulls / cur.rows
        if n_ref == 0 and n_cur == 0:
            return FeatureDrift(
                statistic="null_share",
                value=cur_null,
                threshold=ref_null,
                verdict="no_data",
                detail="every value is null in the reference and in the current window",
                **base,
            )
        side = "current window" if n_cur == 0 else "reference"
        return FeatureDrift(
            statistic="null_share",
            value=cur_null,
            threshold=ref_null,
            verdict="breach",
            detail=f"every value is null in the {side} only",
            **base,
        )
    chosen = choose_method(kind, n_ref, n_cur, small_sample, method)
    limit = DEFAULT_THRESHOLDS[chosen] if threshold is None else float(threshold)
    score: float | None = None
    if chosen == "ks":
        assert isinstance(ref, NumericSketch) and isinstance(cur, NumericSketch)
        score, value = ks_test(ref, cur)
    elif chosen == "wasserstein":
        assert isinstance(ref, NumericSketch) and isinstance(cur, NumericSketch)
        value = wasserstein_normed(ref, cur)
    else:
        r, c = _binned(ref, cur)
        if chosen == "chi2":
            score, value = chi2_test(r, c)
        elif chosen == "jensenshannon":
            value = js_distance(r, c)
        else:
            value = psi(r, c)
    drifted = value < limit if chosen in P_VALUE_METHODS else value >= limit
    how = "p-value" if chosen in P_VALUE_METHODS else "distance"
    op = "<" if chosen in P_VALUE_METHODS else ">="
    detail = f"{chosen} {how} {value:.4g} {op if drifted else 'not ' + op} {limit:g}"
    return FeatureDrift(
        statistic=chosen,
        value=value,
        threshold=limit,
        verdict="breach" if drifted else "ok",
        detail=detail,
        score=score,
        plot=_plot(ref, cur),
        **base,
    )


def compare(
    reference: Profile,
    current: Profile,
    config: MonitoringConfig,
    *,
    skipped: Mapping[str, str] | None = None,
) -> DriftReport:
    """Per-column drift and the dataset verdict; columns with no data do not count towards the share."""
    results = []
    for name, kind in reference.kinds.items():
        col = config.columns.get(name)
        results.append(
            compare_column(
                name,
                kind,
                reference.sketches[name],
                current.sketches[name],
                small_sample=config.small_sample,
                method=col.method if col else "auto",
                threshold=col.threshold if col else None,
            )
        )
    counted = [r for r in results if r.verdict != "no_data"]
    share = sum(r.drifted for r in counted) / len(counted) if counted else math.nan
    verdict: Verdict = "no_data" if not counted else "breach" if share >= config.drift_share else "ok"
    return DriftReport(
        features=results,
        drift_share=config.drift_share,
        share=share,
        verdict=verdict,
        n_reference=reference.rows,
        n_current=current.rows,
        skipped=dict(skipped or {}),
    )


def detect_drift(
    reference: Iterable[pa.RecordBatch],
    current: Iterable[pa.RecordBatch],
    kinds: Mapping[str, Kind],
    config: MonitoringConfig,
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
) -> DriftReport:
    """One pass over the reference, then one over the current window (binned on the reference's deciles)."""
    for name in config.columns:
        if name not in kinds and name != "prediction":
            raise MonitoringError(
                f"monitoring.columns.{name}: no monitored column {name!r} in the reference",
                hint=f"monitored columns: {', '.join(kinds) or '(none)'}",
            )
    ref = profile(reference, kinds, sample_size=sample_size, seed=0)
    cur = profile(current, kinds, edges=ref.edges(), sample_size=sample_size, seed=1)
    return compare(ref, cur, config)
