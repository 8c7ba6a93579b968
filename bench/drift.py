"""Benchmark: loopline's drift computation vs Evidently 0.7 ``Report([DataDriftPreset()])``.

500k reference vs 500k current rows x 20 numeric columns, 5 of them shifted (x1.3 + 0.5). Both read
the same Parquet files; each runs in its own subprocess so time and peak memory (``ru_maxrss``,
which includes the interpreter and imports) are measured separately. Evidently needs pandas < 3,
so it runs from its own venv (``bench/.venv-evidently``, created on first use, gitignored).

    .venv/bin/python bench/drift.py [--rows 500000] [--cols 20] [--shifted 5] [--repeat 3] [--evidently-repeat 1]

Each tool's time is the fastest of its runs (loopline 3, Evidently 1 by default), measured inside the
worker from reading the Parquet files to the drifted set (imports excluded for both).

Targets: loopline >= 10x faster, lower peak memory, the same set of drifted columns.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EVIDENTLY_VENV = HERE / ".venv-evidently"
EVIDENTLY_REQS = ["evidently==0.7.*", "pandas<3"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- workers (subprocesses)
def worker_loopline(ref_path: str, cur_path: str) -> dict[str, Any]:
    import pyarrow.dataset as ds

    from loopline.config import MonitoringConfig
    from loopline.monitoring.drift import detect_drift, infer_kinds

    t0 = time.perf_counter()
    ref = ds.dataset(ref_path)
    cur = ds.dataset(cur_path)
    kinds, _ = infer_kinds(ref.schema, ref.schema.names)
    report = detect_drift(ref.to_batches(), cur.to_batches(), kinds, MonitoringConfig())
    elapsed = time.perf_counter() - t0
    return {
        "tool": "loopline",
        "seconds": elapsed,
        "peak_mb": peak_mb(),
        "drifted": sorted(report.drifted),
        "methods": sorted({f.statistic for f in report.features}),
        "dataset_drift": report.verdict == "breach",
    }


def worker_evidently(ref_path: str, cur_path: str) -> dict[str, Any]:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    t0 = time.perf_counter()
    ref = pd.read_parquet(ref_path)
    cur = pd.read_parquet(cur_path)
    snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    elapsed = time.perf_counter() - t0
    drifted, methods, dataset_drift = [], set(), False
    for m in snapshot.dict()["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith("ValueDrift"):
            methods.add(cfg["method"])
            value, threshold = float(m["value"]), float(cfg["threshold"])
            is_p = "p_value" in cfg["method"] or "test" in cfg["method"].lower()
            if (value < threshold) if is_p else (value >= threshold):
                drifted.append(cfg["column"])
        elif cfg["type"].endswith("DriftedColumnsCount"):
            dataset_drift = float(m["value"]["share"]) >= float(cfg["drift_share"])
    return {
        "tool": f"evidently {__import__('evidently').__version__}",
        "seconds": elapsed,
        "peak_mb": peak_mb(),
        "drifted": sorted(drifted),
        "methods": sorted(methods),
        "dataset_drift": dataset_drift,
    }


# ----------------------------------------------------------------------------- driver
def ensure_evidently() -> Path:
    py = EVIDENTLY_VENV / "bin" / "python"
    if py.exists():
        ok = subprocess.run(
            [str(py), "-c", "import evidently, pandas; assert pandas.__version__ < '3'"], capture_output=True
        )
        if ok.returncode == 0:
            return py
    print(f"creating {EVIDENTLY_VENV} with {' '.join(EVIDENTLY_REQS)} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(EVIDENTLY_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *EVIDENTLY_REQS], check=True)
    return py


def make_data(folder: Path, rows: int, cols: int, shifted: int, seed: int = 7) -> tuple[Path, Path, list[str]]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    names = [f"f{i:02d}" for i in range(cols)]
    shifted_names = names[:shifted]
    ref = pa.table({n: rng.normal(size=rows) for n in names})
    cur = pa.table(
        {n: rng.normal(size=rows) * 1.3 + 0.5 if n in shifted_names else rng.normal(size=rows) for n in names}
    )
    ref_path, cur_path = folder / "reference.parquet", folder / "current.parquet"
    pq.write_table(ref, ref_path, row_group_size=131_072)
    pq.write_table(cur, cur_path, row_group_size=131_072)
    return ref_path, cur_path, shifted_names


def run_worker(python: Path | str, tool: str, ref: Path, cur: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run(
        [str(python), __file__, "--worker", tool, str(ref), str(cur)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"{tool} worker failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--cols", type=int, default=20)
    ap.add_argument("--shifted", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="loopline runs; the fastest is reported")
    ap.add_argument("--evidently-repeat", type=int, default=1, help="Evidently runs (about 100 s each here)")
    ap.add_argument("--worker", nargs=3, metavar=("TOOL", "REF", "CUR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        tool, ref, cur = args.worker
        result = worker_loopline(ref, cur) if tool == "loopline" else worker_evidently(ref, cur)
        print(json.dumps(result))
        return

    evidently_py = ensure_evidently()
    with tempfile.TemporaryDirectory(prefix="loopline-bench-") as tmp:
        ref, cur, expected = make_data(Path(tmp), args.rows, args.cols, args.shifted)
        print(
            f"data: {args.rows:,} reference vs {args.rows:,} current rows x {args.cols} numeric columns; "
            f"shifted (x1.3 + 0.5): {', '.join(expected)}"
        )
        results: dict[str, dict[str, Any]] = {}
        for tool, py in (("loopline", sys.executable), ("evidently", evidently_py)):
            n = args.repeat if tool == "loopline" else args.evidently_repeat
            runs = [run_worker(py, tool, ref, cur) for _ in range(n)]
            results[tool] = min(runs, key=lambda r: float(r["seconds"]))
    lo, ev = results["loopline"], results["evidently"]
    print(f"{'tool':<18}{'seconds':>10}{'peak MB':>10}  methods / drifted columns")
    for r in (lo, ev):
        print(
            f"{r['tool']!s:<18}{float(r['seconds']):>10.2f}{float(r['peak_mb']):>10.0f}  "
            f"{', '.join(r['methods'])} / {', '.join(r['drifted'])}"
        )
    speed = float(ev["seconds"]) / float(lo["seconds"])
    mem = float(ev["peak_mb"]) / float(lo["peak_mb"])
    same = lo["drifted"] == ev["drifted"]
    print(
        f"ratio: loopline is {speed:.1f}x faster, uses {mem:.1f}x less peak memory; "
        f"same drifted set: {same}; matches the shifted columns: {lo['drifted'] == sorted(expected)}"
    )
    ok = speed >= 10 and mem > 1 and same
    print("targets (>= 10x faster, lower peak memory, same set):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
