"""Benchmark: loopline batch scoring vs the limit vs a naive baseline.

    .venv/bin/python bench/batch.py                       # 1M and 10M rows, both tables
    .venv/bin/python bench/batch.py --rows 200000         # quick run
    .venv/bin/python bench/batch.py --rows 1000000 --repeat 3

For each size and table, a Delta `features` table of N rows x 20 inputs (+ id) is written: ``float``
(20 float64) and ``mixed`` (10 float64, 6 int64, 4 string categories), and one fitted
HistGradientBoostingRegressor (or LightGBM with --model lgbm; for the mixed table inside the pipeline
``loopline run train`` builds for categorical inputs) is registered as @champion in the project's MLflow
registry (sqlite). Then, each in a fresh subprocess (imports excluded, for every
contender alike: mlflow with its sqlite store modules, sklearn/skops, pandas, deltalake):

- loopline:  loopline.batch.score(project): registry -> model, Delta in -> Delta `predictions` out
- limit:     the same fitted model's predict() on the whole table already in memory (numpy for the
             float table, the pandas DataFrame it was fitted on for the mixed one)
- naive:     (--naive) DeltaTable.to_pandas() -> pyfunc.predict -> write_deltalake (whole table in memory)

Printed: rows/s, ratios (targets: loopline >= 0.9x the limit for each table; loopline's peak RSS at
the largest size <= 1.2x its peak at the smallest), and the child's peak RSS (VmHWM).
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
# the mixed table: 10 float64, 6 int64 and 4 string (categorical) columns, 20 inputs in all
FLOATS, INTS = FEATURES[:10], FEATURES[10:16]
CATS = {"c0": 5, "c1": 12, "c2": 40, "c3": 150}  # column -> number of distinct values
MIXED = [*FLOATS, *INTS, *CATS]


def columns_of(table: str) -> list[str]:
    return FEATURES if table == "float" else MIXED


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
def _chunk(start: int, n: int, table: str = "float"):  # type: ignore[no-untyped-def]
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(start)
    x = rng.normal(size=(n, N_FEATURES))
    cols = {"id": pa.array(np.arange(start, start + n, dtype=np.int64))}
    if table == "float":
        cols.update({f: x[:, i] for i, f in enumerate(FEATURES)})
        return pa.record_batch(cols)
    cols.update({f: x[:, i] for i, f in enumerate(FLOATS)})
    cols.update({f: np.round(x[:, 10 + i] * 10).astype(np.int64) for i, f in enumerate(INTS)})
    for c, k in CATS.items():
        codes = rng.integers(0, k, size=n)
        cols[c] = pa.array(np.array([f"{c}_{v}" for v in range(k)], dtype=object)[codes], pa.string())
    return pa.record_batch(cols)


def make_table(project_dir: Path, rows: int, table: str) -> None:
    import pyarrow as pa

    from loopline.config import load_project
    from loopline.tables import DeltaStore

    project = load_project(project_dir)
    store = DeltaStore(project.storage_root)
    if store.exists("features") and store.info("features").rows == rows:
        return
    schema = _chunk(0, 1, table).schema
    gen = (_chunk(s, min(CHUNK, rows - s), table) for s in range(0, rows, CHUNK))
    store.overwrite("features", pa.RecordBatchReader.from_batches(schema, gen))


def fit_model(kind: str, table: str):  # type: ignore[no-untyped-def]
    """The float table's model is the bare estimator; the mixed table's is what ``loopline run train``
    logs for categorical inputs (estimators.build: OrdinalEncoder in a ColumnTransformer, then the model)."""
    import numpy as np

    from loopline.estimators import build, categorical_columns

    n = 200_000
    frame = _chunk(10**9, n, table).to_pandas().drop(columns="id")
    x = np.column_stack([frame[c].to_numpy(dtype=np.float64) for c in FEATURES if c in frame])
    w = np.random.default_rng(7).normal(size=x.shape[1])
    y = x @ w + 3 * np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    for c, k in CATS.items():
        if c in frame:
            y = y + frame[c].str.rsplit("_", n=1).str[1].astype(int).to_numpy() % 7 / k * 5
    if kind == "lgbm":
        from lightgbm import LGBMRegressor

        cls: type = LGBMRegressor
        params: dict[str, object] = {"n_estimators": 200, "num_leaves": 31, "verbose": -1}
    else:
        from sklearn.ensemble import HistGradientBoostingRegressor

        cls, params = HistGradientBoostingRegressor, {"max_iter": 100, "early_stopping": False, "random_state": 0}
    model = build(cls, params, categorical_columns(frame, list(frame.columns)), list(frame.columns))
    return model.fit(frame, y), frame.head(1000)


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


def _cpu() -> float:
    """CPU seconds of this process, all threads (user + system)."""
    t = os.times()
    return t.user + t.system


def child(kind: str, project_dir: Path, table_kind: str) -> dict[str, float]:
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
    inputs = columns_of(table_kind)
    before = _peak_mb()
    extra: dict[str, float] = {}
    cpu0 = _cpu()
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
        table = DeltaTable(features).to_pyarrow_table(columns=inputs)
        if table_kind == "float":  # C order, as a user would have it
            x: object = np.column_stack([table.column(f).to_numpy() for f in inputs])
        else:  # the DataFrame the pipeline was fitted on (strings as objects)
            x = table.to_pandas()
        del table
        cpu0, t0 = _cpu(), time.perf_counter()
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
        out["prediction"] = model.predict(df[inputs])
        out["_batch_id"] = "naive"
        write_deltalake(f"{project.storage_root}/predictions_naive", out, mode="overwrite")
        seconds = time.perf_counter() - t0
        rows = len(out)
    else:
        raise SystemExit(f"unknown child {kind}")
    return {
        "rows": rows,
        "seconds": seconds,
        "cpu_s": _cpu() - cpu0,
        "rows_per_s": rows / seconds,
        "peak_mb": _peak_mb(),
        "peak_before_mb": before,
        **extra,
    }


def run_child(kind: str, project_dir: Path, table: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, __file__, "--child", kind, "--project", str(project_dir), "--table", table]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------- main
def _med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in runs)


def _spread(runs: list[dict[str, float]]) -> str:
    v = [r["rows_per_s"] for r in runs]
    return f"{min(v):,.0f}-{max(v):,.0f}" if len(v) > 1 else "-"


def measure(args: argparse.Namespace, work: Path, table: str, n: int, kinds: list[str]) -> dict[str, list[dict]]:
    d = work / f"rows_{n}_{args.model}_{table}"
    d.mkdir(exist_ok=True)
    (d / "loopline.yaml").write_text(YAML)
    t = time.perf_counter()
    make_table(d, n, table)
    model, sample = fit_model(args.model, table)
    register(d, model, sample)
    print(f"\n{table} table, {n:,} rows: table + registered model ready in {time.perf_counter() - t:.0f}s", flush=True)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for _ in range(args.repeat):
        for k in kinds:  # interleaved, so machine load drifts hit every contender alike
            r = run_child(k, d, table)
            runs[k].append(r)
            load = f"  (model resolve+load {r['load_s']:.1f}s)" if "load_s" in r else ""
            print(
                f"  {k:16s} {r['seconds']:8.2f}s {r['rows_per_s']:12,.0f} rows/s  CPU {r['cpu_s']:6.1f}s"
                f"  peak RSS {r['peak_mb']:7.0f} MB"
                f"{load}  load avg {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1000000,10000000", help="comma-separated table sizes")
    ap.add_argument("--tables", default="float,mixed", help="float (20 float64) and/or mixed (float/int/string)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement (the median is reported)")
    ap.add_argument("--model", choices=["hgb", "lgbm"], default="hgb")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: a temp folder)")
    ap.add_argument("--pyfunc", action="store_true", help="also time loopline with the fast path disabled")
    ap.add_argument("--naive", action="store_true", help="also time the whole-table pandas baseline")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--table", default="float", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.project, args.table)))
        return

    sizes = [int(float(s)) for s in args.rows.split(",")]
    tables = [t.strip() for t in args.tables.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="loopline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir {work}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; model {args.model}")
    kinds = ["limit", "loopline"] + (["naive"] if args.naive else []) + (["loopline_pyfunc"] if args.pyfunc else [])
    results = {(t, n): measure(args, work, t, n, kinds) for n in sizes for t in tables}

    print(f"\nsummary (median of {args.repeat}, range in brackets; load average now {os.getloadavg()[0]:.1f})")
    print("loopline = the whole job (registry -> model load -> Delta in -> predict -> Delta out);")
    print("loopline* = the same job without its one-off model resolve+load, which the limit does not pay either")
    print(
        f"{'table':>6} {'rows':>11} {'limit rows/s':>13} {'loopline':>10} {'loopline*':>10} {'ratio':>6} "
        f"{'ratio*':>7} {'loopline RSS':>13}  (limit range / loopline range)"
    )
    worst: dict[str, float] = {}
    for (t, n), r in results.items():
        lim, ll, sc = (
            _med(r["limit"], "rows_per_s"),
            _med(r["loopline"], "rows_per_s"),
            _med(r["loopline"], "scoring_rows_per_s"),
        )
        worst[t] = min(worst.get(t, 9.9), ll / lim)
        print(
            f"{t:>6} {n:>11,} {lim:>13,.0f} {ll:>10,.0f} {sc:>10,.0f} {ll / lim:>5.2f}x {sc / lim:>6.2f}x "
            f"{_med(r['loopline'], 'peak_mb'):>10.0f} MB  ({_spread(r['limit'])} / {_spread(r['loopline'])})"
        )
        cpu_l, cpu_j = _med(r["limit"], "cpu_s"), _med(r["loopline"], "cpu_s")
        print(f"{'':>18} CPU seconds: limit {cpu_l:.1f}, loopline {cpu_j:.1f} (limit/loopline {cpu_l / cpu_j:.2f}x)")
        for k in ("naive", "loopline_pyfunc"):
            if k in r:
                print(f"{'':>18} {k}: {_med(r[k], 'rows_per_s'):,.0f} rows/s, peak RSS {_med(r[k], 'peak_mb'):.0f} MB")
    for t, w in worst.items():
        print(f"target {t}: whole job >= 0.9x limit: {'PASS' if w >= 0.9 else 'FAIL'} (worst {w:.2f}x)")
    for t in tables:
        lo, hi = (
            _med(results[(t, min(sizes))]["loopline"], "peak_mb"),
            _med(results[(t, max(sizes))]["loopline"], "peak_mb"),
        )
        if len(sizes) > 1:
            print(
                f"target {t}: peak RSS at {max(sizes):,} <= 1.2x at {min(sizes):,} (flat): "
                f"{'PASS' if hi <= 1.2 * lo else 'FAIL'} ({hi:.0f} MB / {lo:.0f} MB = {hi / lo:.2f}x)"
            )


if __name__ == "__main__":
    main()
