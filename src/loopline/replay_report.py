"""The replay's HTML page: per policy, the loop's champion vs the never-retrained model vs the oracle on every
window (three curves), the loop's actions, and a table of the means. Self-contained (inline SVG and CSS)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from loopline.charts import Series, line_chart

if TYPE_CHECKING:
    from loopline.config import Project
    from loopline.replay import PolicyResult, ReplayResult

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#666;font-size:12px}
"""


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _means_table(result: ReplayResult) -> str:
    e = html.escape
    better = "lower" if result.lower_is_better else "higher"
    rows = []
    for p in result.policies:
        loop, never, oracle = p.mean("loop"), p.mean("never_retrained"), p.mean("oracle")
        ratio = f"{loop / oracle:.3f}" if loop is not None and oracle else "-"
        promoted = sum(1 for w in p.windows if w.action.startswith("promoted"))
        rows.append(
            f"<tr><td>{e(p.name)}</td><td class=num>{_num(loop)}</td><td class=num>{_num(never)}</td>"
            f"<td class=num>{_num(oracle)}</td><td class=num>{ratio}</td><td class=num>{promoted}</td>"
            f"<td class=num>{p.seconds:.0f}</td><td>{e(_overrides(p))}</td></tr>"
        )
    return (
        f"<table><tr><th>policy</th><th>loop</th><th>never retrained</th><th>oracle</th><th>loop / oracle</th>"
        f"<th>promotions</th><th>seconds</th><th>overrides</th></tr>{''.join(rows)}</table>"
        f'<p class="muted">Means of {e(result.metric)} over the replayed windows ({better} is better).</p>'
    )


def _overrides(p: PolicyResult) -> str:
    import json

    return json.dumps(p.overrides, default=str) if p.overrides else "(the project's config)"


def _policy(result: ReplayResult, p: PolicyResult) -> str:
    e = html.escape
    labels = [w.label for w in p.windows]
    chart = line_chart(
        labels,
        [
            Series("loop (champion of the moment)", [w.loop for w in p.windows], "#4c78a8"),
            Series("never retrained", [w.never_retrained for w in p.windows], "#e45756", dashed=True),
            Series("oracle (refit every window)", [w.oracle for w in p.windows], "#54a24b", dashed=True),
        ],
        title=f"{result.metric} per window",
        y_label=result.metric,
        markers=[(i, w.action) for i, w in enumerate(p.windows) if w.action.startswith("promoted")],
    )
    rows = "".join(
        f"<tr><td>{e(w.label)}</td><td class=num>{w.rows}</td><td>v{e(w.champion_version)}</td>"
        f"<td class=num>{_num(w.loop)}</td><td class=num>{_num(w.never_retrained)}</td>"
        f"<td class=num>{_num(w.oracle)}</td><td class=num>{_num(w.drift_share)}</td>"
        f"<td>{e(', '.join(w.triggers) or '-')}</td><td>{e(w.action)}</td></tr>"
        for w in p.windows
    )
    return (
        f"<h2>Policy {e(p.name)}</h2>{chart}"
        f"<table><tr><th>window</th><th>rows</th><th>champion</th><th>loop</th><th>never retrained</th>"
        f"<th>oracle</th><th>drift share</th><th>triggers</th><th>action</th></tr>{rows}</table>"
    )


def render(project: Project, result: ReplayResult) -> str:
    e = html.escape
    body = "".join(_policy(result, p) for p in result.policies)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>loopline replay: {e(project.config.project)}</title>"
        f"<style>{STYLE}</style></head><body><h1>Replay of {e(project.config.project)}</h1>"
        f'<p class="muted">Source {e(result.source)}, replay {e(result.replay_id)}: every window is scored by the '
        f"champion the loop had then, by the first model never retrained, and by an oracle refit on every "
        f"labelled row before the window (same estimator and parameters).</p>"
        f"{_means_table(result)}{body}</body></html>"
    )


def write_report(project: Project, result: ReplayResult) -> Path:
    folder = project.root / ".loopline" / "replay"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"replay-{result.replay_id}.html"
    path.write_text(render(project, result))
    (folder / "latest.html").write_text(path.read_text())
    return path
