"""Benchmark: loopline batch scoring vs the limit vs a naive baseline.

    .venv/bin/python bench/batch.py                       # 1M and 10M rows
    .venv/bin/python bench/batch.py --rows 200000         # quick run
    .venv/bin/python bench/batch.py --rows 1000000 --repeat 3

For each size, a Delta `features` table of N rows x 20 float64 features (+ id) is written, and one
fitted HistGradientBoostingRegressor (or LightGBM with --model lgbm) is registered as @champion
in the project's MLflow registry (sqlite). Then, each in a fresh subprocess (imports excluded, for every
contender alike: mlflow with its sqlite store modules, sklearn/skops, pandas, deltalake):

- loopline:  loopline.batch.score(project): registry -> model, Delta in -> Delta `predictions` out
- limit:     the same fitted model's predict() on the whole table already in memory as numpy
- naive:     DeltaTable.to_pandas() -> pyfunc.predict -> write_deltalake (whole table in memory)

Printed: rows/s, ratios (targets: loopline >= 0.7x the limit; loopline's peak RSS at the largest
size <= 1.5x its peak at the smallest), and the child's peak RSS (getrusage ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

N_FEATURES = 20
CHUNK = 500_000
FEATURES = [f"f{i:02d}" for i in range(N_FEATURES)]
YAML = textwrap.dedent(
    """\
    project: bench
    model:
      name: bench
      target: y
      keys: [id]
    gate:
      prediction_range: [-30, 30]
    environments:
      dev: {}
    """
)


# ----------------------------------------------------------------------------- data and model
def _chunk(start: int, n: int):  # type: ignore[no-untyped-def]
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(start)
    x = rng.normal(size=(n, N_FEATURES))
    cols = {"id": pa.array(np.arange(start, start + n, dtype=np.int64))}
    cols.update({f: x[:, i] for i, f in enumerate(FEATURES)})
    return pa.record_batch(cols)


def make_table(project_dir: Path, rows: int) -> None:
    import pyarrow as pa

    from loopline.config import load_project
    from loopline.tables import DeltaStore

    project = load_project(project_dir)
    store = DeltaStore(project.storage_root)
    if store.exists("features") and store.info("features").rows == rows:
        return
    schema = _chunk(0, 1).schema
    gen = (_chunk(s, min(CHUNK, rows - s)) for s in range(0, rows, CHUNK))
    store.overwrite("features", pa.RecordBatchReader.from_batches(schema, gen))


def fit_model(kind: str):  # type: ignore[no-untyped-def]
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    x = rng.normal(size=(200_000, N_FEATURES))
    w = rng.normal(size=N_FEATURES)
    y = x @ w + 3 * np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    frame = pd.DataFrame(x, columns=FEATURES)
    if kind == "lgbm":
        from lightgbm import LGBMRegressor

        model = LGBMRegressor(n_estimators=200, num_leaves=31, verbose=-1).fit(frame, y)
    else:
        from sklearn.ensemble import HistGradientBoostingRegressor

        model = HistGradientBoostingRegressor(max_iter=100, early_stopping=False, random_state=0).fit(frame, y)
    return model, frame.head(1000)


def register(project_dir: Path, model, sample) -> None:  # type: ignore[no-untyped-def]
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from loopline import tracking
    from loopline.config import load_project

    project = load_project(project_dir)
    if tracking.alias_version(project) is not None:
        return
    import skops.io

    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))  # our own freshly fitted model
    with tracking.bound(project), mlflow.start_run(experiment_id=tracking.experiment_id(project)):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(sample, model.predict(sample)),
            pip_requirements=["scikit-learn", "lightgbm"],
            registered_model_name=project.registered_model,
            skops_trusted_types=trusted,
        )
    tracking.client(project).set_registered_model_alias(
        project.registered_model, "champion", str(info.registered_model_version)
    )


# ----------------------------------------------------------------------------- children
def _peak_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not inherit the forking parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, project_dir: Path) -> dict[str, float]:
    import mlflow.pyfunc
    import mlflow.sklearn
    import mlflow.store.model_registry.sqlalchemy_store  # the sqlite stores' modules (SQLAlchemy, alembic):
    import mlflow.store.tracking.sqlalchemy_store  # ~1.4 s of imports, excluded like the rest
    import numpy as np
    import pandas as pd  # noqa: F401  (imports excluded from every timing)
    import skops.io  # noqa: F401  (imported by the sklearn flavor's loader; ~all of sklearn)
    from deltalake import DeltaTable, write_deltalake

    from loopline.batch import score
    from loopline.config import load_project

    project = load_project(project_dir)
    features = f"{project.storage_root}/features"
    before = _peak_mb()
    extra: dict[str, float] = {}
    if kind in ("loopline", "loopline_pyfunc"):
        t0 = time.perf_counter()
        result = score(project, batch_id="bench", fast=kind == "loopline")
        seconds = time.perf_counter() - t0
        rows = result.rows
        extra = {"load_s": result.load_seconds, "scoring_rows_per_s": rows / (seconds - result.load_seconds)}
    elif kind == "limit":
        from loopline import tracking

        with tracking.bound(project):
            model = mlflow.sklearn.load_model(tracking.model_uri(project))
        table = DeltaTable(features).to_pyarrow_table(columns=FEATURES)
        x = np.column_stack([table.column(f).to_numpy() for f in FEATURES])  # C order, as a user would have
        del table
        t0 = time.perf_counter()
        pred = model.predict(x)
        seconds = time.perf_counter() - t0
        rows = len(pred)
    elif kind == "naive":
        from loopline import tracking

        t0 = time.perf_counter()
        df = DeltaTable(features).to_pandas()
        with tracking.bound(project):
            model = mlflow.pyfunc.load_model(tracking.model_uri(project))
        out = df[["id"]].copy()
        out["prediction"] = model.predict(df[FEATURES])
        out["_batch_id"] = "naive"
        write_deltalake(f"{project.storage_root}/predictions_naive", out, mode="overwrite")
        seconds = time.perf_counter() - t0
        rows = len(out)
    else:
        raise SystemExit(f"unknown child {kind}")
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "peak_mb": _peak_mb(),
        "peak_before_mb": before,
        **extra,
    }


def run_child(kind: str, project_dir: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--project", str(project_dir)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1000000,10000000", help="comma-separated table sizes")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement (the median is reported)")
    ap.add_argument("--model", choices=["hgb", "lgbm"], default="hgb")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: a temp folder)")
    ap.add_argument("--pyfunc", action="store_true", help="also time loopline with the fast path disabled")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.project)))
        return

    sizes = [int(float(s)) for s in args.rows.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="loopline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir {work}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; model {args.model}")
    model, sample = fit_model(args.model)
    kinds = ["limit", "loopline", "naive"] + (["loopline_pyfunc"] if args.pyfunc else [])
    results: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        d = work / f"rows_{n}_{args.model}"
        d.mkdir(exist_ok=True)
        (d / "loopline.yaml").write_text(YAML)
        t = time.perf_counter()
        make_table(d, n)
        register(d, model, sample)
        print(f"\n{n:,} rows: table + registered model ready in {time.perf_counter() - t:.0f}s", flush=True)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for _ in range(args.repeat):
            for k in kinds:  # interleaved, so machine load drifts hit every contender alike
                r = run_child(k, d)
                runs[k].append(r)
                load = f"  (model resolve+load {r['load_s']:.1f}s)" if "load_s" in r else ""
                print(
                    f"  {k:16s} {r['seconds']:8.2f}s {r['rows_per_s']:12,.0f} rows/s  peak RSS {r['peak_mb']:7.0f} MB"
                    f"{load}",
                    flush=True,
                )
        results[n] = {
            k: {
                "rows_per_s": statistics.median(r["rows_per_s"] for r in v),
                "scoring_rows_per_s": statistics.median(r.get("scoring_rows_per_s", 0.0) for r in v),
                "peak_mb": statistics.median(r["peak_mb"] for r in v),
            }
            for k, v in runs.items()
        }

    print(f"\nsummary (median of {args.repeat}; load average now {os.getloadavg()[0]:.1f})")
    print("loopline = the whole job (registry -> model load -> Delta in -> Delta out); loopline* = the same job")
    print("without its one-off model resolve+load, which the limit does not pay either")
    print(
        f"{'rows':>12} {'limit rows/s':>14} {'loopline':>10} {'loopline*':>10} {'naive':>10} "
        f"{'loopline/limit':>15} {'loopline*/limit':>16} {'naive/limit':>12} {'loopline/naive':>15} "
        f"{'loopline RSS':>13} {'naive RSS':>10}"
    )
    for n, r in results.items():
        lim, ll, nv = r["limit"]["rows_per_s"], r["loopline"]["rows_per_s"], r["naive"]["rows_per_s"]
        sc = r["loopline"]["scoring_rows_per_s"]
        print(
            f"{n:>12,} {lim:>14,.0f} {ll:>10,.0f} {sc:>10,.0f} {nv:>10,.0f} {ll / lim:>14.2f}x {sc / lim:>15.2f}x "
            f"{nv / lim:>11.2f}x {ll / nv:>14.2f}x {r['loopline']['peak_mb']:>10.0f} MB {r['naive']['peak_mb']:>7.0f} MB"
        )
        if "loopline_pyfunc" in r:
            print(
                f"{'':>12} loopline with the pyfunc path: {r['loopline_pyfunc']['rows_per_s']:,.0f} rows/s "
                f"(fast path {ll / r['loopline_pyfunc']['rows_per_s']:.2f}x)"
            )
    for key, label in (("rows_per_s", "loopline"), ("scoring_rows_per_s", "loopline*")):
        worst = min(r["loopline"][key] / r["limit"]["rows_per_s"] for r in results.values())
        print(f"target {label} >= 0.7x limit: {'PASS' if worst >= 0.7 else 'FAIL'} (worst {worst:.2f}x)")
    if len(results) > 1:
        lo, hi = results[min(results)], results[max(results)]
        ratio = hi["loopline"]["peak_mb"] / lo["loopline"]["peak_mb"]
        print(
            f"target loopline peak RSS at {max(results):,} <= 1.5x at {min(results):,}: "
            f"{'PASS' if ratio <= 1.5 else 'FAIL'} ({hi['loopline']['peak_mb']:.0f} MB / "
            f"{lo['loopline']['peak_mb']:.0f} MB = {ratio:.2f}x)"
        )


if __name__ == "__main__":
    main()
