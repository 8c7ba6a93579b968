"""How loopline's results look in a notebook: small self-contained HTML tables (no script, no stylesheet).

The result classes hold ``_repr_html_ = display.repr_html`` and nothing else; what each shows is here, one
function per result type (looked up by class name, so this module imports nothing heavy). Every value is
escaped with :func:`html.escape`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any

_TABLE = "border-collapse:collapse;margin:4px 0;font-size:13px"
_CELL = "border:1px solid #ccc;padding:2px 8px;text-align:left"
_VERDICT_COLOUR = {
    "ok": "#1a7f37",
    "passed": "#1a7f37",
    "promoted": "#1a7f37",
    "breach": "#cf222e",
    "failed": "#cf222e",
    "refused": "#cf222e",
    "needs_review": "#cf222e",
    "crashed": "#cf222e",
    "no_data": "#9a6700",
    "skipped": "#9a6700",
}


def text(value: Any) -> str:
    """A value as short escaped text: numbers to 6 significant digits, times to the second, None as -."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, datetime):
        return escape(value.strftime("%Y-%m-%d %H:%M:%S"))
    return escape(str(value))


def verdict(value: str | None) -> str:
    """A verdict word, coloured (green ok / red breach / amber no data)."""
    if not value:
        return "-"
    colour = _VERDICT_COLOUR.get(value)
    return f'<b style="color:{colour}">{escape(value)}</b>' if colour else escape(value)


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table with a caption; cells are HTML already (escape them with :func:`text`)."""
    head = "".join(f'<th style="{_CELL}">{escape(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f'<td style="{_CELL}">{c}</td>' for c in row) + "</tr>" for row in rows)
    caption = f'<caption style="text-align:left;font-weight:bold">{escape(title)}</caption>'
    return f'<table style="{_TABLE}">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def fields(title: str, items: Iterable[tuple[str, str]]) -> str:
    """A two-column table of name / value (values are HTML already)."""
    return table(title, ("", ""), [(f"<b>{escape(k)}</b>", v) for k, v in items])


def block(*parts: str) -> str:
    return '<div class="loopline">' + "".join(parts) + "</div>"


# ----------------------------------------------------------------------------- one function per result type
def train_html(r: Any) -> str:
    gate = r.gate
    head = fields(
        f"train: {r.model} version {r.version}",
        [
            ("gate", verdict(gate.verdict)),
            ("run id", text(r.run_id)),
            ("features version", text(r.features_version)),
            ("rows train / valid / test", f"{r.n_train} / {r.n_valid} / {r.n_test}"),
            ("seconds", text(r.duration_s)),
        ],
    )
    base = sorted({k.split("_", 1)[1] for k in r.metrics if "_" in k})
    metrics = table(
        "metrics",
        ("metric", "valid", "test"),
        [(text(m), text(r.metrics.get(f"valid_{m}")), text(r.metrics.get(f"test_{m}"))) for m in base],
    )
    champion = f"champion v{gate.champion_version}" if gate.champion_version else "champion (none)"
    compared = table(
        f"gate: candidate v{gate.candidate_version} vs {champion}",
        ("metric", "candidate", "champion"),
        [(text(m), text(c), text(ch)) for m, c, ch in gate.rows()],
    )
    failed = table("failed rules", ("rule",), [(text(x),) for x in gate.failed_rules]) if gate.failed_rules else ""
    return block(head, metrics, compared, failed)


def batch_html(r: Any) -> str:
    return block(
        fields(
            f"batch {r.batch_id}",
            [
                ("rows scored", text(r.rows)),
                ("out of range", text(r.out_of_range)),
                ("model", text(f"{r.model_name} v{r.model_version}")),
                ("input", text(f"{r.input} (version {r.input_version})")),
                ("predictions table version", text(r.table_version)),
                ("engine", text(r.engine)),
                ("seconds", text(r.seconds)),
                ("rows per second", text(round(r.rows_per_second))),
            ],
        )
    )


def monitor_html(r: Any) -> str:
    head = fields(
        f"monitoring {r.model_name} v{r.model_version}",
        [
            ("verdict", verdict(r.verdict)),
            ("message", text(r.message)),
            ("window", f"{text(r.window_start)} .. {text(r.window_end)} UTC"),
            ("dataset drift share", f"{text(r.drift.share)} (threshold {text(r.drift.drift_share)})"),
            ("performance", verdict(r.performance.verdict) if r.performance else "-"),
            ("report", text(r.report_html)),
        ],
    )
    drift = table(
        "feature drift",
        ("feature", "statistic", "value", "threshold", "verdict"),
        [
            (text(f.feature), text(f.statistic), text(f.value), text(f.threshold), verdict(f.verdict))
            for f in [*r.drift.features, *r.prediction_drifts]
        ],
    )
    return block(head, drift)


def loop_html(r: Any) -> str:
    head = fields(
        f"loop {r.loop_id}",
        [
            ("action", text(r.action)),
            ("triggers", text(", ".join(r.triggers) or "none")),
            ("candidate version", text(r.candidate_version)),
            ("champion version", text(r.champion_version)),
            ("exit code", text(r.exit_code)),
        ],
    )
    steps = table(
        "decisions",
        ("step", "outcome", "reasons"),
        [(text(d.get("step")), verdict(d.get("outcome")), text(d.get("reasons"))) for d in r.decisions],
    )
    return block(head, steps)


def replay_html(r: Any) -> str:
    better = "lower" if r.lower_is_better else "higher"
    means = []
    for p in r.policies:
        loop, oracle = p.mean("loop"), p.mean("oracle")
        ratio = loop / oracle if loop is not None and oracle else None
        means.append((text(p.name), text(loop), text(p.mean("never_retrained")), text(oracle), text(ratio)))
    summary = table(
        f"replay {r.replay_id}: mean {r.metric} ({better} is better) over {r.source}",
        ("policy", "loop", "never retrained", "oracle", "loop / oracle"),
        means,
    )
    windows = [
        table(
            f"policy {p.name} per window",
            ("window", "rows", "champion", "loop", "never retrained", "oracle", "action"),
            [
                (
                    text(w.label),
                    text(w.rows),
                    text(f"v{w.champion_version}"),
                    text(w.loop),
                    text(w.never_retrained),
                    text(w.oracle),
                    text(w.action),
                )
                for w in p.windows
            ],
        )
        for p in r.policies
    ]
    return block(summary, *windows)


def status_html(r: Any) -> str:
    def version(v: Any) -> str:
        return f"v{text(v.version)} (gate {verdict(v.gate_verdict)})" if v is not None else "-"

    review = verdict("needs_review") + f" {text(r.review.reason)}" if r.review.needed else "no"
    head = fields(
        f"{r.project} · env {r.env} · model {r.registered_model}",
        [
            ("champion", version(r.champion)),
            ("challenger", version(r.challenger)),
            ("last monitoring", verdict(r.monitoring.verdict) if r.monitoring else "-"),
            ("needs review", review),
            ("tracking", text(r.tracking_uri)),
        ],
    )
    runs = table(
        "last run of each job",
        ("job", "status", "started (UTC)", "seconds", "summary"),
        [
            (text(job), verdict(rec.status), text(rec.started_at), text(rec.duration_s), text(rec.summary()))
            if rec is not None
            else (text(job), "never run", "-", "-", "-")
            for job, rec in r._all_runs().items()
        ],
    )
    return block(head, runs)


RENDERERS: dict[str, Callable[[Any], str]] = {
    "TrainResult": train_html,
    "BatchResult": batch_html,
    "MonitorResult": monitor_html,
    "LoopResult": loop_html,
    "ReplayResult": replay_html,
    "StatusReport": status_html,
}


def repr_html(obj: Any) -> str:
    """The notebook view of a loopline result (``_repr_html_`` of each result class)."""
    return RENDERERS[type(obj).__name__](obj)
