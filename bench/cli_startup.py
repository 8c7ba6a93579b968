"""Benchmark: `loopline --help` wall time next to `python -c "import mlflow"` (target: loopline < 0.3 s).

Also checks that `loopline --help` imports none of mlflow, pyspark, scipy, pandas.
Run: .venv/bin/python bench/cli_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def heavy_imports() -> list[str]:
    code = (
        "import sys; sys.argv=['loopline','--help']\n"
        "from loopline.cli import run\n"
        "run()\n"
        "mods = ('mlflow', 'pyspark', 'scipy', 'pandas', 'sklearn', 'deltalake', 'duckdb')\n"
        "print('HEAVY=' + ','.join(m for m in mods if m in sys.modules), file=sys.stderr)"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    line = next(ln for ln in err.splitlines() if ln.startswith("HEAVY="))
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    cli = timed([str(BIN / "loopline"), "--help"], args.repeat)
    mlf = timed([sys.executable, "-c", "import mlflow"], max(3, args.repeat // 2))
    heavy = heavy_imports()
    print(f"loopline --help          median {cli * 1000:7.0f} ms  (target < 300 ms)")
    print(f'python -c "import mlflow" median {mlf * 1000:7.0f} ms')
    print(f"ratio mlflow-import / loopline-help: {mlf / cli:.1f}x")
    print(f"heavy modules imported by --help: {heavy or 'none'}")


if __name__ == "__main__":
    main()
