"""The monitoring report: one self-contained HTML file (inline CSS and SVG, no script, nothing fetched
from the network, so it opens offline) and the same content as JSON.

Sections: verdict and checks; per-feature drift table; reference vs current distributions of every
drifted feature (and of the predictions: labels and probabilities); performance on labelled
predictions; for classifiers the per-class view (precision, recall, F1 in the window against the
gate's per-class view of the champion, as a chart and a table) and the confusion matrix; metrics over
time from the ``monitoring`` table; actions taken (rows of the ``decisions`` table when the loop wrote
any, plus ``result.actions``).
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from loopline.config import Project
    from loopline.monitoring.drift import FeatureDrift
    from loopline.monitoring.monitor import MonitorResult
    from loopline.monitoring.performance import PerformanceResult
    from loopline.tables import DeltaStore

HISTORY_CHECKS = 60
REF_COLOR = "#4c78a8"
CUR_COLOR = "#f58518"
CLASS_COLORS = {"precision": "#4c78a8", "recall": "#f58518", "f1": "#54a24b"}
MAX_CLASSES_CHART = 30
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} .ok{color:#1a7f37;font-weight:600} .breach{color:#cf222e;font-weight:600}
.no_data{color:#9a6700;font-weight:600} .muted{color:#666;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:16px} .card{border:1px solid #ddd;padding:8px;border-radius:4px}
td.num{text-align:right} table.cm td{text-align:right;min-width:36px} table.cm td.diag{font-weight:700}
"""


def _e(x: object) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.4g}"


def _verdict(v: str) -> str:
    return f'<span class="{_e(v)}">{_e(v.replace("_", " "))}</span>'


# ----------------------------------------------------------------------------- SVG
def svg_distribution(title: str, plot: dict[str, Any], width: int = 340, height: int = 190) -> str:
    """Reference vs current shares as side-by-side bars (categories or histogram bins)."""
    if not plot:
        return ""
    ref, cur = plot["reference"], plot["current"]
    n = len(ref)
    if n == 0:
        return ""
    left, bottom, top = 36, 36, 22
    pw, ph = width - left - 8, height - bottom - top
    top_val = max(max(ref), max(cur), 1e-9)
    slot = pw / n
    bar = max(slot / 2 - 1, 0.5)
    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f'<text x="{left}" y="14" font-size="12" font-weight="600">{_e(title)}</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#999"/>',
        f'<text x="2" y="{top + 8}" font-size="10">{top_val:.2f}</text>',
        f'<text x="2" y="{top + ph}" font-size="10">0</text>',
    ]
    for i, (r, c) in enumerate(zip(ref, cur, strict=True)):
        x = left + i * slot
        for j, (v, color) in enumerate(((r, REF_COLOR), (c, CUR_COLOR))):
            h = ph * v / top_val
            parts.append(
                f'<rect x="{x + j * bar:.1f}" y="{top + ph - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{color}" fill-opacity="0.85"/>'
            )
    if plot.get("type") == "hist":
        edges = plot["edges"]
        parts.append(f'<text x="{left}" y="{height - 20}" font-size="10">{edges[0]:.3g}</text>')
        parts.append(f'<text x="{left + pw}" y="{height - 20}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text>')
    else:
        cats = plot.get("categories", [])
        for i, cat in enumerate(cats[:12]):
            x = left + i * slot + slot / 2
            parts.append(
                f'<text x="{x:.1f}" y="{height - 22}" font-size="9" text-anchor="middle">{_e(str(cat)[:8])}</text>'
            )
    parts.append(
        f'<rect x="{left}" y="{height - 12}" width="10" height="8" fill="{REF_COLOR}"/>'
        f'<text x="{left + 14}" y="{height - 4}" font-size="10">reference</text>'
        f'<rect x="{left + 80}" y="{height - 12}" width="10" height="8" fill="{CUR_COLOR}"/>'
        f'<text x="{left + 94}" y="{height - 4}" font-size="10">current</text></svg>'
    )
    return "".join(parts)


def svg_line(
    title: str,
    points: list[tuple[datetime, float]],
    threshold: float | None = None,
    width: int = 520,
    height: int = 180,
) -> str:
    """A metric over time (one point per check), with its threshold as a dashed line."""
    pts = [(t, v) for t, v in points if v is not None and math.isfinite(v)]
    if not pts:
        return ""
    left, right, top, bottom = 44, 10, 22, 28
    pw, ph = width - left - right, height - top - bottom
    values = [v for _, v in pts] + ([threshold] if threshold is not None and math.isfinite(threshold) else [])
    lo, hi = min(values), max(values)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    t0, t1 = pts[0][0].timestamp(), pts[-1][0].timestamp()
    span = t1 - t0 or 1.0

    def xy(t: datetime, v: float) -> tuple[float, float]:
        x = left + (pw * (t.timestamp() - t0) / span if len(pts) > 1 else pw / 2)
        return x, top + ph - ph * (v - lo) / (hi - lo)

    coords = [xy(t, v) for t, v in pts]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f'<text x="{left}" y="14" font-size="12" font-weight="600">{_e(title)}</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#999"/>',
        f'<text x="2" y="{top + 8}" font-size="10">{hi:.3g}</text>',
        f'<text x="2" y="{top + ph}" font-size="10">{lo:.3g}</text>',
        f'<polyline points="{path}" fill="none" stroke="{REF_COLOR}" stroke-width="2"/>',
    ]
    parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{REF_COLOR}"/>' for x, y in coords]
    if threshold is not None and math.isfinite(threshold):
        _, ty = xy(pts[0][0], threshold)
        parts.append(
            f'<line x1="{left}" y1="{ty:.1f}" x2="{left + pw}" y2="{ty:.1f}" stroke="#cf222e" '
            f'stroke-dasharray="4 3"/><text x="{left + pw}" y="{ty - 3:.1f}" font-size="10" '
            f'text-anchor="end" fill="#cf222e">threshold {threshold:.3g}</text>'
        )
    parts.append(
        f'<text x="{left}" y="{height - 8}" font-size="10">{pts[0][0]:%Y-%m-%d %H:%M}</text>'
        f'<text x="{left + pw}" y="{height - 8}" font-size="10" text-anchor="end">'
        f"{pts[-1][0]:%Y-%m-%d %H:%M}</text></svg>"
    )
    return "".join(parts)


def svg_per_class(view: dict[str, Any], gate: dict[str, Any], width: int = 640, height: int = 220) -> str:
    """Precision, recall and F1 per class in the window (bars) with the gate-time values (black ticks)."""
    classes = list(view.get("classes", []))[:MAX_CLASSES_CHART]
    if not classes:
        return ""
    gate_at = {_label(c): i for i, c in enumerate(gate.get("classes", []))}
    left, bottom, top = 36, 40, 22
    pw, ph = width - left - 8, height - bottom - top
    slot = pw / len(classes)
    bar = max((slot - 4) / 3, 0.5)
    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f'<text x="{left}" y="14" font-size="12" font-weight="600">per class: window (bars) vs gate (ticks)</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#999"/>',
        f'<text x="2" y="{top + 8}" font-size="10">1.0</text><text x="2" y="{top + ph}" font-size="10">0</text>',
    ]
    for i, cls in enumerate(classes):
        x0 = left + i * slot + 2
        j = gate_at.get(_label(cls))
        for k, stat in enumerate(("precision", "recall", "f1")):
            v = view[stat][i]
            x = x0 + k * bar
            h = ph * max(min(float(v), 1.0), 0.0)
            parts.append(
                f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{CLASS_COLORS[stat]}" fill-opacity="0.85">'
                f"<title>{_e(_label(cls))} {stat} {v:.3f}</title></rect>"
            )
            g = gate.get(stat)
            if j is not None and isinstance(g, list) and j < len(g):
                gy = top + ph - ph * max(min(float(g[j]), 1.0), 0.0)
                parts.append(f'<line x1="{x:.1f}" y1="{gy:.1f}" x2="{x + bar:.1f}" y2="{gy:.1f}" stroke="#000"/>')
        parts.append(
            f'<text x="{x0 + 1.5 * bar:.1f}" y="{top + ph + 12}" font-size="9" text-anchor="middle">'
            f"{_e(_label(cls)[:10])}</text>"
        )
    x = left
    for stat, color in CLASS_COLORS.items():
        parts.append(
            f'<rect x="{x}" y="{height - 12}" width="10" height="8" fill="{color}"/>'
            f'<text x="{x + 14}" y="{height - 4}" font-size="10">{stat}</text>'
        )
        x += 80
    parts.append("</svg>")
    return "".join(parts)


def _label(v: Any) -> str:
    from loopline.monitoring.performance import label_text

    return label_text(v)


def confusion_table(view: dict[str, Any]) -> str:
    """The confusion matrix (rows: true label, columns: predicted), cells shaded by their share of the row."""
    classes = [_label(c) for c in view.get("classes", [])]
    cm = view.get("confusion_matrix") or []
    if not classes or not cm:
        return ""
    out = ['<table class="cm"><tr><th>true ↓ · predicted →</th>' + "".join(f"<th>{_e(c)}</th>" for c in classes)]
    out.append("<th>support</th></tr>")
    for i, row in enumerate(cm):
        total = sum(row) or 1
        cells = []
        for j, count in enumerate(row):
            share = count / total
            color = "26,127,55" if i == j else "207,34,46"
            style = f' style="background:rgba({color},{0.08 + 0.5 * share:.2f})"' if count else ""
            cls = ' class="diag"' if i == j else ""
            cells.append(f"<td{cls}{style}>{count}</td>")
        out.append(f"<tr><th>{_e(classes[i])}</th>{''.join(cells)}<td>{sum(row)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def per_class_table(r: PerformanceResult) -> str:
    """Precision, recall, F1 per class: window value, gate-time value, limit, verdict; support."""
    if not r.class_checks:
        return ""
    support = {
        _label(c): n for c, n in zip(r.per_class.get("classes", []), r.per_class.get("support", []), strict=False)
    }
    gate_support = {
        _label(c): n
        for c, n in zip(r.per_class_gate.get("classes", []), r.per_class_gate.get("support", []), strict=False)
    }
    out = [
        "<table><tr><th>class</th><th>statistic</th><th>window</th><th>gate-time test</th><th>limit</th>"
        "<th>verdict</th><th>support (window)</th><th>support (gate)</th></tr>"
    ]
    for c in r.class_checks:
        label = _label(c.label)
        out.append(
            f"<tr><td>{_e(label)}</td><td>{_e(c.statistic)}</td><td class=num>{_num(c.value)}</td>"
            f"<td class=num>{_num(c.baseline)}</td><td class=num>{_num(c.threshold)}</td><td>{_verdict(c.verdict)}</td>"
            f"<td class=num>{support.get(label, 0)}</td><td class=num>{_e(gate_support.get(label, '-'))}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


# ----------------------------------------------------------------------------- HTML
def _history(store: DeltaStore | None) -> pa.Table | None:
    if store is None or not store.exists("monitoring"):
        return None
    table = store.read("monitoring", columns=["checked_at", "kind", "feature", "slice", "value", "threshold"])
    return table


Series = list[tuple[datetime, float]]


def _series(history: pa.Table | None, kind: str, feature: str | None) -> tuple[Series, float | None]:
    if history is None:
        return [], None
    rows = [
        r
        for r in history.to_pylist()
        if r["kind"] == kind and r["slice"] is None and (feature is None or r["feature"] == feature)
    ]
    rows.sort(key=lambda r: r["checked_at"])
    rows = rows[-HISTORY_CHECKS:]
    thr = rows[-1]["threshold"] if rows else None
    return [(r["checked_at"], r["value"]) for r in rows if r["value"] is not None], thr


def _actions(store: DeltaStore | None, extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = list(extra)
    if store is not None and store.exists("decisions"):
        rows = store.read("decisions").to_pylist()
        rows.sort(key=lambda r: r.get("timestamp") or datetime.min, reverse=True)
        out += rows[:20]
    return out


def render_html(
    project_name: str, env: str, result: MonitorResult, history: pa.Table | None, actions: list[dict[str, Any]]
) -> str:
    r = result
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>loopline monitoring · {_e(project_name)} · {_e(env)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Monitoring · {_e(project_name)} · {_e(env)}</h1>",
        f'<p class="muted">checked {r.checked_at:%Y-%m-%d %H:%M:%S} UTC · window {r.window_start:%Y-%m-%d %H:%M}'
        f" .. {r.window_end:%Y-%m-%d %H:%M} UTC · model {_e(r.model_name)} v{_e(r.model_version)} (run "
        f"{_e(r.run_id)}) · reference: features version {r.features_version}</p>",
        f"<p>Verdict: {_verdict(r.verdict)} · {_e(r.message)}</p>",
        "<h2>Checks</h2><table>",
        "<tr><th>check</th><th>statistic</th><th>value</th><th>threshold</th><th>verdict</th><th>detail</th></tr>",
    ]
    d = r.drift
    out.append(
        f"<tr><td>dataset drift</td><td>share of drifted features</td><td>{_num(d.share)}</td>"
        f"<td>{_num(d.drift_share)}</td><td>{_verdict(d.verdict)}</td>"
        f"<td>{_e(', '.join(d.drifted) or 'none drifted')}</td></tr>"
    )
    for p in r.prediction_drifts:
        what = "prediction drift" if p.feature == "prediction" else f"prediction drift ({p.feature})"
        out.append(
            f"<tr><td>{_e(what)}</td><td>{_e(p.statistic)}</td><td>{_num(p.value)}</td>"
            f"<td>{_num(p.threshold)}</td><td>{_verdict(p.verdict)}</td><td>{_e(p.detail)}</td></tr>"
        )
    if r.performance:
        w = r.performance.watched
        out.append(
            f"<tr><td>performance</td><td>{_e(r.performance.metric)}</td><td>{_num(w.value if w else None)}"
            f"</td><td>{_num(w.threshold if w else None)}</td><td>{_verdict(r.performance.verdict)}</td>"
            f"<td>{_e(r.performance.message)}</td></tr>"
        )
    if r.range:
        out.append(
            f"<tr><td>prediction range ({_e(r.range.column)})</td><td>out_of_range_share</td>"
            f"<td>{_num(r.range.share)}</td>"
            f"<td>{_num(r.range.threshold)}</td><td>{_verdict(r.range.verdict)}</td>"
            f"<td>{_e(r.range.message)}</td></tr>"
        )
    out.append("</table>")

    out.append(
        "<h2>Feature drift</h2><table><tr><th>feature</th><th>kind</th><th>statistic</th><th>value</th>"
        "<th>threshold</th><th>verdict</th><th>reference n</th><th>current n</th><th>detail</th></tr>"
    )
    for f in d.features:
        out.append(
            f"<tr><td>{_e(f.feature)}</td><td>{_e(f.kind)}</td><td>{_e(f.statistic)}</td>"
            f"<td>{_num(f.value)}</td><td>{_num(f.threshold)}</td><td>{_verdict(f.verdict)}</td>"
            f"<td>{f.n_reference}</td><td>{f.n_current}</td><td>{_e(f.detail)}</td></tr>"
        )
    out.append("</table>")
    if d.skipped:
        out.append(
            '<p class="muted">not monitored: ' + _e("; ".join(f"{k} ({v})" for k, v in d.skipped.items())) + "</p>"
        )

    drifted: list[FeatureDrift] = [f for f in d.features if f.drifted]
    drifted += [p for p in r.prediction_drifts if p.drifted]
    out.append("<h2>Distributions of drifted columns (reference vs current)</h2>")
    charts = [svg_distribution(f"{f.feature} · {f.statistic} {_num(f.value)}", f.plot) for f in drifted]
    charts = [c for c in charts if c]
    out.append(
        '<div class="grid">' + "".join(f'<div class="card">{c}</div>' for c in charts) + "</div>"
        if charts
        else "<p>No column drifted.</p>"
    )

    if r.performance and r.performance.checks:
        out.append(
            "<h2>Performance on labelled predictions</h2><table><tr><th>metric</th><th>slice</th>"
            "<th>value</th><th>gate-time test</th><th>limit</th><th>verdict</th><th>n</th></tr>"
        )
        for c in r.performance.checks:
            out.append(
                f"<tr><td>{_e(c.metric)}</td><td>{_e(c.slice or 'all')}</td><td>{_num(c.value)}</td>"
                f"<td>{_num(c.baseline)}</td><td>{_num(c.threshold)}</td><td>{_verdict(c.verdict)}</td>"
                f"<td>{c.n}</td></tr>"
            )
        out.append("</table>")
    if r.performance and r.performance.notes:
        out.append("".join(f'<p class="muted">note: {_e(n)}</p>' for n in r.performance.notes))
    if r.performance and r.performance.per_class:
        perf = r.performance
        out.append("<h2>Per class (labelled predictions in the window vs the gate)</h2>")
        chart = svg_per_class(perf.per_class, perf.per_class_gate)
        if chart:
            out.append(f'<div class="card">{chart}</div>')
        out.append(per_class_table(perf))
        out.append("<h3>Confusion matrix (window)</h3>" + confusion_table(perf.per_class))
        if perf.per_class_gate.get("confusion_matrix"):
            out.append("<h3>Confusion matrix (gate-time test rows)</h3>" + confusion_table(perf.per_class_gate))

    out.append("<h2>Over time</h2>")
    lines = []
    s, t = _series(history, "dataset_drift", "*")
    lines.append(svg_line("share of drifted features", s, t))
    if r.performance:
        s, t = _series(history, "performance", r.performance.metric)
        lines.append(svg_line(f"{r.performance.metric} on labelled predictions", s, t))
    s, t = _series(history, "range", r.range.column if r.range else None)
    lines.append(svg_line("share of predictions out of range", s, t))
    lines = [x for x in lines if x]
    out.append(
        '<div class="grid">' + "".join(f'<div class="card">{c}</div>' for c in lines) + "</div>"
        if lines
        else "<p>No history yet.</p>"
    )

    out.append("<h2>Actions taken</h2>")
    if actions:
        keys = sorted({k for a in actions for k in a})
        out.append("<table><tr>" + "".join(f"<th>{_e(k)}</th>" for k in keys) + "</tr>")
        for a in actions:
            out.append("<tr>" + "".join(f"<td>{_e(a.get(k))}</td>" for k in keys) + "</tr>")
        out.append("</table>")
    else:
        out.append("<p>None recorded: the monitor only reports; `loopline loop` acts on a breach.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def write_reports(project: Project, result: MonitorResult, store: DeltaStore | None = None) -> tuple[Path, Path]:
    """Write ``<state_dir>/reports/monitor-<UTC time>.html`` and ``.json``; return both paths."""
    folder = project.state_dir / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"monitor-{result.checked_at:%Y%m%dT%H%M%S%f}Z"
    html_path, json_path = folder / f"{stem}.html", folder / f"{stem}.json"
    result.report_html, result.report_json = html_path, json_path
    actions = _actions(store, result.actions)
    html_path.write_text(render_html(project.config.project, project.env, result, _history(store), actions))
    data = result.to_dict()
    data["actions"] = actions
    json_path.write_text(json.dumps(data, indent=2, default=str))
    return html_path, json_path
