"""Integration: the two classification examples replayed through the CLI, as a new user would run them.

Each example is copied to a temporary folder and replayed on January to May 2011 (`--param until=5`):
Jan-Mar train the first model, April and May go through the real loop. The printed table, the `replay`
table (read back with `loopline sql`), the HTML page with the three curves and the metric values are checked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _support import run_cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CASES = {
    # example: (lowest sane ROC AUC of a month, label type of its predictions)
    "busy_hours": (0.9, "bool"),
    "weather_next_hour": (0.75, "str"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_example_replays_april_and_may_through_the_cli(tmp_path: Path, name: str) -> None:
    root = tmp_path / name
    shutil.copytree(EXAMPLES / name, root, ignore=shutil.ignore_patterns(".loopline", "__pycache__", ".pytest_cache"))
    assert run_cli("check", "--project", str(root)).returncode == 0

    r = run_cli("replay", "--project", str(root), "--param", "until=5", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "policy current: roc_auc per window (higher is better)" in out
    assert "means of roc_auc over the replayed windows" in out
    assert "2011-04" in out and "2011-05" in out and "2011-06" not in out

    shown = run_cli("sql", 'select * from replay order by "window"', "--project", str(root), "--format", "json")
    assert shown.returncode == 0, shown.stderr
    rows = [json.loads(line) for line in shown.stdout.splitlines()]  # one JSON object per row
    assert [(w["policy"], w["label"], w["metric"]) for w in rows] == [
        ("current", "2011-04", "roc_auc"),
        ("current", "2011-05", "roc_auc"),
    ]
    low, _ = CASES[name]
    for w in rows:
        for which in ("loop", "never_retrained", "oracle"):
            assert low < w[which] <= 1.0, (w["label"], which, w[which])
        assert 600 < w["rows"] < 800
        assert w["champion_version"] and w["action"]
    april = rows[0]
    # in April the champion is the first model (the never-retrained one), a refit on every Jan-Mar row: the
    # oracle refits the same estimator and parameters on the same rows, so all three agree
    assert april["champion_version"] == "1"
    assert april["loop"] == pytest.approx(april["never_retrained"], abs=1e-9)
    assert april["oracle"] == pytest.approx(april["loop"], abs=1e-6)
    # the means printed are the means of the table's rows
    mean_loop = f"{sum(w['loop'] for w in rows) / 2:.4g}"
    assert f"current │ {mean_loop}" in out, out[-1500:]

    (page,) = (root / ".loopline" / "replay").glob("replay-*.html")
    html = page.read_text()
    for curve in ("loop (champion of the moment)", "never retrained", "oracle (refit every window)"):
        assert f">{curve}</text>" in html
    assert html.count("<polyline") == 3

    # the replayed champion's predictions keep the label's own type and carry probabilities
    policy = root / ".loopline" / "replay" / "current" / "tables" / "predictions"
    from deltalake import DeltaTable

    preds = DeltaTable(str(policy)).to_pyarrow_table()
    assert str(preds.schema.field("prediction").type) == {"bool": "bool", "str": "string"}[CASES[name][1]]
    probability = preds.column("probability").to_numpy()
    assert ((probability >= 0) & (probability <= 1)).all()
    assert preds.column("probabilities").null_count == 0
