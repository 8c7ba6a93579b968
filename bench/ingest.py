"""Benchmark: `loopline ingest` of a large CSV (peak RSS, rows/s) vs a naive pandas baseline.

    .venv/bin/python bench/ingest.py                    # 3M rows (~150 MB CSV)
    .venv/bin/python bench/ingest.py --rows 300000      # quick run

A CSV of N rows (id, an int `season`, 6 float columns, a text column, a timestamp; one value in 100k is
`spring` in the int column) is written to a temporary project with a contract, then each contender runs
in its own process, launched by a small wrapper that reports the child's peak RSS
(getrusage(RUSAGE_CHILDREN).ru_maxrss):

- loopline: `loopline ingest` (source -> raw -> validate/quarantine -> features, streaming)
- naive:    pandas.read_csv + deltalake.write_deltalake of the same file (whole file in memory)

Printed: rows/s and peak RSS of each and the ratios. Target: loopline's peak RSS <= 1 GB whatever N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

YAML = textwrap.dedent(
    """\
    project: bench
    model: {name: bench, target: y, keys: [id]}
    sources:
      big: {kind: csv, path: big.csv}
    contract:
      max_failure_rate: 0.01
      columns:
        id: {type: int, nullable: false, unique: true}
        season: {type: int, min: 0, max: 3}
        x1: {type: float}
        x2: {type: float}
        x3: {type: float}
        x4: {type: float}
        x5: {type: float}
        x6: {type: float, min: 0}
        y: {type: float}
        label: {type: str}
        ts: {type: datetime}
    environments: {dev: {}}
    """
)
WRAPPER = textwrap.dedent(
    """\
    import json, resource, subprocess, sys, time
    start = time.perf_counter()
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"rc": done.returncode, "seconds": took, "peak_mb": peak, "err": done.stderr[-2000:]}))
    """
)
NAIVE = textwrap.dedent(
    """\
    import sys, pandas as pd
    from deltalake import write_deltalake
    df = pd.read_csv(sys.argv[1], dtype={"season": "string"})  # `spring` would make the write fail
    write_deltalake(sys.argv[2], df, mode="overwrite")
    """
)


def write_csv(path: Path, rows: int) -> None:
    chunk = 200_000
    with path.open("w") as f:
        f.write("id,season,x1,x2,x3,x4,x5,x6,y,label,ts\n")
        for start in range(0, rows, chunk):
            lines = []
            for i in range(start, min(rows, start + chunk)):
                season = "spring" if i % 100_000 == 99_999 else str(i % 4)
                x = i % 997
                lines.append(
                    f"{i},{season},{x * 0.5},{x * 1.5},{x * 2.5},{x * 3.5},{x * 4.5},{x * 5.5},{i % 1000 * 0.1},"
                    f"l{i % 17},2024-01-{i % 28 + 1:02d} {i % 24:02d}:00:00\n"
                )
            f.write("".join(lines))


def measure(args: list[str], cwd: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", WRAPPER, *args], cwd=cwd, env=env, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{args[:3]} failed ({result['rc']}): {result['err']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--skip-naive", action="store_true", help="only measure loopline")
    a = parser.parse_args()
    loopline = str(Path(sys.executable).parent / "loopline")
    with tempfile.TemporaryDirectory(prefix="loopline-bench-ingest-") as tmp:
        root = Path(tmp)
        (root / "loopline.yaml").write_text(YAML)
        t0 = time.perf_counter()
        write_csv(root / "big.csv", a.rows)
        size_mb = (root / "big.csv").stat().st_size / 2**20
        print(f"{a.rows:,} rows, {size_mb:,.0f} MB CSV written in {time.perf_counter() - t0:.1f} s")
        ours = measure([loopline, "ingest", "big", "--batch-id", "bench"], root)
        print(
            f"loopline ingest: {a.rows / ours['seconds']:,.0f} rows/s ({ours['seconds']:.1f} s), "
            f"peak RSS {ours['peak_mb']:,.0f} MB (target <= 1024 MB)"
        )
        if a.skip_naive:
            return
        naive = measure([sys.executable, "-c", NAIVE, str(root / "big.csv"), str(root / "naive")], root)
        print(
            f"naive pandas.read_csv + write_deltalake: {a.rows / naive['seconds']:,.0f} rows/s "
            f"({naive['seconds']:.1f} s), peak RSS {naive['peak_mb']:,.0f} MB"
        )
        print(
            f"ratios loopline/naive: time {ours['seconds'] / naive['seconds']:.2f}x, "
            f"peak RSS {ours['peak_mb'] / naive['peak_mb']:.2f}x "
            "(loopline also validates, quarantines and writes features)"
        )


if __name__ == "__main__":
    main()
