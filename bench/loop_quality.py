"""Benchmark: does the loop learn? `loopline replay` on the examples, the loop's champion against the
never-retrained model and an oracle that refits every window on all labelled rows (same estimator and params).

Targets (issue "A loop that learns"):
- Bikeshare (regression, MAE): loop <= 1.10x the oracle; the never-retrained model >= 2x the loop.
- The two classification examples (ROC AUC): loop within 0.02 of the oracle (mean over windows) and strictly
  above the never-retrained model.
- Replay overhead: a 12-month Bikeshare replay (9 replayed windows) in <= 2 minutes.

Each example is copied to a temporary folder and replayed with its own `replay:` config (and the named
policies given with --policy, e.g. `--policy refit_off`), so the benchmark compares policies side by side.
Run: .venv/bin/python bench/loop_quality.py [--only bikeshare] [--policy every_month] [--serve]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "bikeshare": ROOT / "examples" / "bikeshare",
    "busy_hours": ROOT / "examples" / "busy_hours",
    "weather_next_hour": ROOT / "examples" / "weather_next_hour",
}


def run(name: str, folder: Path, policies: list[str], serve: bool) -> tuple[object, float]:
    from loopline.config import load_project
    from loopline.replay import replay

    work = Path(tempfile.mkdtemp(prefix=f"loopline-bench-{name}-"))
    try:
        shutil.copytree(folder, work / name, ignore=shutil.ignore_patterns(".loopline", "__pycache__"))
        sys.path.insert(0, str(work / name))
        project = load_project(work / name)
        known = [p for p in policies if p in project.config.replay.policies]
        t0 = time.perf_counter()
        result = replay(project, policies=known, serve=serve, say=lambda line: print("  " + line, flush=True))
        return result, time.perf_counter() - t0
    finally:
        sys.path.remove(str(work / name)) if str(work / name) in sys.path else None
        shutil.rmtree(work, ignore_errors=True)


def verdict(name: str, result: object, seconds: float) -> list[str]:
    lines = []
    for p in result.policies:  # type: ignore[attr-defined]
        loop, never, oracle = p.mean("loop"), p.mean("never_retrained"), p.mean("oracle")
        if loop is None or never is None or oracle is None:
            lines.append(f"{name:18s} {p.name:12s} no metric")
            continue
        if result.lower_is_better:  # type: ignore[attr-defined]
            ok = loop <= 1.10 * oracle and never >= 2.0 * loop
            target = f"loop/oracle {loop / oracle:.3f} (<= 1.10), never/loop {never / loop:.2f} (>= 2)"
        else:
            ok = oracle - loop <= 0.02 and loop > never
            target = f"oracle - loop {oracle - loop:+.4f} (<= 0.02), loop - never {loop - never:+.4f} (> 0)"
        metric = result.metric  # type: ignore[attr-defined]
        lines.append(
            f"{name:18s} {p.name:12s} {metric} loop {loop:.4g} never {never:.4g} oracle {oracle:.4g}  "
            f"{target}  {'MET' if ok or p.name != 'current' else 'NOT MET'}  ({p.seconds:.0f} s)"
        )
    if name == "bikeshare":
        current = result.policies[0]  # type: ignore[attr-defined]
        lines.append(f"{'':18s} replay time (current policy, 9 windows): {current.seconds:.0f} s (<= 120 s)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append", choices=sorted(EXAMPLES), help="Replay only these examples.")
    ap.add_argument("--policy", action="append", default=[], help="Also replay this replay.policies entry.")
    ap.add_argument("--serve", action="store_true", help="Send a sample of each window through real HTTP.")
    args = ap.parse_args()
    summary: list[str] = []
    for name in args.only or list(EXAMPLES):
        folder = EXAMPLES[name]
        if not (folder / "loopline.yaml").is_file():
            summary.append(f"{name:18s} missing ({folder})")
            continue
        print(f"== {name}", flush=True)
        result, seconds = run(name, folder, args.policy, args.serve)
        summary += verdict(name, result, seconds)
    print("\n".join(["", "== loop quality", *summary]))


if __name__ == "__main__":
    main()
