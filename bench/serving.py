"""Online serving benchmark: loopline's server vs ``mlflow models serve`` on the same registered model.

    .venv/bin/python bench/serving.py [--seconds 4] [--rounds 3] [--concurrency 1 8] [--workers 1]
        [--client wrk|python] [--plain] [--keep DIR]

Builds a throwaway project (HistGradientBoostingRegressor, 100 trees, on 3 numeric columns, registered
as ``prod.bench`` with alias ``champion`` in a sqlite registry) and starts four servers on 127.0.0.1:
``mlflow models serve -m models:/prod.bench@champion --env-manager local`` as is, the same with
``OMP_NUM_THREADS=1`` (loopline's default, so the fair baseline), ``loopline serve --env prod``
(prediction log ON) and ``loopline serve --env nolog`` (log OFF); ``--plain`` adds loopline with
``serving.compile_trees: false`` (the estimator's own predict instead of Treelite). All stay up; a
bounded load generator (wrk, a C program: one thread, N keep-alive connections, when it is on PATH
(``apt-get install wrk``); else one Python process per ``http.client`` connection, which takes CPU
from the servers on a small machine) sends one-row ``dataframe_split`` JSON, warm-up discarded, to
one server at a time, alternating servers round by round so that a busy
minute on a shared machine hits all of them alike. Reports rps, p50, p99 (client side) and the
servers' own CPU time per request (robust to other load on the machine), then the ratios the serving
issue asks for:

* loopline (log on) rps / mlflow rps at concurrency 8 (target >= 1.5)
* loopline (log on) p99 at concurrency 8 (target <= 10 ms)
* loopline log on / log off rps (target >= 0.9)
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]
YAML = textwrap.dedent(
    """\
    project: bench
    model: {name: bench, target: y}
    serving:
      log: {flush_rows: 1000, flush_interval: 2s}
    environments:
      prod: {}
      nolog:
        tracking_uri: sqlite:///{db}
        registered_model: prod.bench
        overrides:
          serving: {log: {enabled: false}}
      plain:
        tracking_uri: sqlite:///{db}
        registered_model: prod.bench
        overrides:
          serving: {compile_trees: false}
    """
)
BODY = json.dumps({"dataframe_split": {"columns": ["x", "n", "z"], "data": [[12.5, 3, 0.25]]}}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(root: Path) -> None:
    code = textwrap.dedent(
        f"""
        import warnings; warnings.filterwarnings("ignore")
        import mlflow, numpy as np, pandas as pd
        from mlflow.models import infer_signature
        from sklearn.ensemble import HistGradientBoostingRegressor
        from loopline import tracking
        from loopline.config import load_project
        p = load_project({str(root)!r}, "prod")
        rng = np.random.default_rng(0)
        df = pd.DataFrame({{"x": rng.uniform(0, 50, 2000), "n": rng.integers(0, 10, 2000), "z": rng.normal(size=2000)}})
        y = 2 * df.x + df.n + df.z
        est = HistGradientBoostingRegressor(max_iter=100).fit(df, y)
        with tracking.bound(p), mlflow.start_run(experiment_id=tracking.experiment_id(p)):
            mlflow.sklearn.log_model(est, name="model", signature=infer_signature(df, est.predict(df)),
                input_example=df.head(3), pip_requirements=["scikit-learn"], skops_trusted_types={TRUSTED!r},
                registered_model_name=p.registered_model)
        tracking.client(p).set_registered_model_alias(p.registered_model, "champion", "1")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on {port} not ready")


def _client(port: int, seconds: float, warmup: float, start: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    lat: list[float] = []
    errors = 0
    while time.time() < start:
        time.sleep(0.001)
    t_measure = start + warmup
    t_end = t_measure + seconds
    while True:
        t0 = time.perf_counter()
        now = time.time()
        if now >= t_end:
            break
        conn.request("POST", "/invocations", body=BODY, headers=headers)
        resp = conn.getresponse()
        resp.read()
        dt = time.perf_counter() - t0
        if now >= t_measure:
            if resp.status == 200:
                lat.append(dt)
            else:
                errors += 1
    out.put((lat, errors))


WRK_LUA = """
wrk.method = "POST"
wrk.body = [==[BODY]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %.1f %.1f\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def load_wrk(port: int, concurrency: int, seconds: float, warmup: float = 1.0) -> dict[str, float]:
    """One cell with wrk (a C load generator: one thread, ``concurrency`` keep-alive connections).
    A discarded warm-up run first; returns rps, p50, p99 (ms), n and errors of the measured run."""
    script = Path(tempfile.gettempdir()) / f"loopline-bench-{os.getpid()}.lua"
    script.write_text(WRK_LUA.replace("BODY", BODY.decode()))
    url = f"http://127.0.0.1:{port}/invocations"
    out: dict[str, float] = {}
    for secs in (warmup, seconds):
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(secs))}s", "-s", str(script), url]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("WRK "))
        n, dur_us, errors, p50, p99 = (float(v) for v in line.split()[1:])
        out = {"n": n, "rps": n / (dur_us / 1e6), "errors": errors, "p50": p50 / 1000, "p99": p99 / 1000}
    return out


def load(port: int, concurrency: int, seconds: float, warmup: float = 1.0) -> tuple[list[float], int]:
    """One cell: ``concurrency`` client processes for ``seconds`` (after ``warmup``); latencies and errors."""
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    start = time.time() + 0.3
    procs = [ctx.Process(target=_client, args=(port, seconds, warmup, start, q)) for _ in range(concurrency)]
    for p in procs:
        p.start()
    lat: list[float] = []
    errors = 0
    for _ in procs:
        part, err = q.get()
        lat.extend(part)
        errors += err
    for p in procs:
        p.join()
    return lat, errors


def summarize(lat: list[float], errors: int, seconds: float, cpu_s: float) -> dict[str, float]:
    lat = sorted(lat)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {
        "rps": len(lat) / seconds,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "n": len(lat),
        "errors": errors,
        "cpu_ms": cpu_s * 1000 / max(len(lat), 1),
    }


def session_cpu(sid: int) -> float:
    """CPU seconds (user + system) used so far by every process of a session (the server and its workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 (session) after the comm
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class Server:
    def __init__(self, label: str, cmd: list[str], env: dict[str, str], port: int, ready: str, root: Path) -> None:
        self.label, self.port, self.ready = label, port, ready
        logf = open(root / f"{label.split()[0]}-{port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=root, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def measure(
    servers: list[Server], conc: list[int], seconds: float, rounds: int, client: str
) -> dict[str, dict[int, dict[str, float]]]:
    """Every server stays up; cells alternate between servers round by round, so a busy minute on a
    shared machine hits all of them alike. CPU per request counts the server's own processes only.
    With wrk, p50/p99 are the median over rounds of each round's percentile."""
    acc: dict[tuple[str, int], list[Any]] = {}
    for c in conc:
        for _ in range(rounds):
            for srv in servers:
                a = acc.setdefault((srv.label, c), [[], 0, 0.0, []])
                cpu0 = session_cpu(srv.proc.pid)
                if client == "wrk":
                    cell = load_wrk(srv.port, c, seconds)
                    a[3].append(cell)
                    a[1] += int(cell["errors"])
                else:
                    lat, err = load(srv.port, c, seconds)
                    a[0].extend(lat)
                    a[1] += err
                cpu = session_cpu(srv.proc.pid) - cpu0
                a[2] += cpu * seconds / (seconds + 1.3)  # drop the warm-up share (approximately)
    out: dict[str, dict[int, dict[str, float]]] = {}
    for (label, c), (lat, err, cpu, cells) in acc.items():
        if cells:
            n = sum(x["n"] for x in cells)
            out.setdefault(label, {})[c] = {
                "rps": sum(x["rps"] for x in cells) / len(cells),
                "p50": statistics.median(x["p50"] for x in cells),
                "p99": statistics.median(x["p99"] for x in cells),
                "n": n,
                "errors": err,
                "cpu_ms": cpu * 1000 / max(n, 1),
            }
        else:
            out.setdefault(label, {})[c] = summarize(lat, err, seconds * rounds, cpu)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="Seconds per cell (one server, one concurrency).")
    ap.add_argument("--rounds", type=int, default=3, help="Cells per server and concurrency, interleaved.")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--workers", type=int, default=1, help="Worker processes of every server.")
    ap.add_argument(
        "--client",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="Load generator: wrk (C, default when on PATH: apt-get install wrk) or Python processes.",
    )
    ap.add_argument(
        "--plain",
        action="store_true",
        help="Also serve with serving.compile_trees off (the estimator's own predict, log on).",
    )
    ap.add_argument("--keep", type=Path, default=None, help="Build the project here and keep it.")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="loopline-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    db = root / ".loopline" / "prod" / "mlflow.db"
    (root / "loopline.yaml").write_text(YAML.replace("{db}", str(db)))
    if not db.exists():
        print(f"building the bench project in {root} ...", flush=True)
        build(root)
    path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # mlflow runs `uvicorn` from PATH
    base_env = {
        **os.environ,
        "PATH": path,
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{db}",
    }
    mlflow_cmd = [
        str(VENV_BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        "models:/prod.bench@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-w",
        str(args.workers),
        "-p",
    ]
    specs = [
        ("mlflow models serve", mlflow_cmd, base_env, "/ping"),
        # the same with one OpenMP thread, as loopline runs by default: the fair baseline
        ("mlflow (OMP threads=1)", mlflow_cmd, {**base_env, "OMP_NUM_THREADS": "1"}, "/ping"),
    ]
    variants = [("loopline (log on)", "prod"), ("loopline (log off)", "nolog")]
    if args.plain:
        variants.append(("loopline (trees not compiled)", "plain"))
    for label, env in variants:
        cmd = [
            str(VENV_BIN / "loopline"),
            "serve",
            "-p",
            str(root),
            "-e",
            env,
            "--workers",
            str(args.workers),
            "--log-level",
            "warning",
            "--port",
        ]
        specs.append((label, cmd, base_env, "/ready"))
    servers: list[Server] = []
    try:
        for label, cmd, env_vars, ready in specs:
            port = free_port()
            servers.append(Server(label, [*cmd, str(port)], env_vars, port, ready, root))
        for srv in servers:
            wait_ready(srv.port, srv.ready, srv.proc)
        results = measure(servers, args.concurrency, args.seconds, args.rounds, args.client)
    finally:
        for srv in servers:
            srv.stop()
    print(
        f"\none-row JSON, keep-alive, {args.rounds} interleaved rounds x {args.seconds:.0f} s per server and "
        f"concurrency, {args.workers} worker(s) each, load generator {args.client}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'server':30} {'conc':>4} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'srv CPU ms/req':>14} {'errors':>6}")
    for name, by_c in results.items():
        for c, r in by_c.items():
            print(
                f"{name:30} {c:>4} {r['rps']:>8.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['cpu_ms']:>14.2f} "
                f"{int(r['errors']):>6}"
            )
    on, off = results["loopline (log on)"], results["loopline (log off)"]
    print()
    for base in ("mlflow models serve", "mlflow (OMP threads=1)"):
        ml = results[base]
        for c in args.concurrency:
            print(
                f"vs {base}, concurrency {c}: rps ratio (loopline log on / mlflow) = "
                f"{on[c]['rps'] / ml[c]['rps']:.2f}x, server CPU per request ratio = "
                f"{ml[c]['cpu_ms'] / on[c]['cpu_ms']:.2f}x, p99 {on[c]['p99']:.2f} ms vs {ml[c]['p99']:.2f} ms"
            )
    for c in args.concurrency:
        print(
            f"concurrency {c}: loopline log on / log off rps = {on[c]['rps'] / off[c]['rps']:.2f}x "
            f"(CPU/request {on[c]['cpu_ms']:.2f} vs {off[c]['cpu_ms']:.2f} ms)"
        )
    try:
        from deltalake import DeltaTable

        n = (
            DeltaTable(str(root / ".loopline" / "prod" / "tables" / "inference_log"))
            .to_pyarrow_table(columns=["request_id"])
            .num_rows
        )
        print(f"inference_log rows after the log-on run: {n}")
    except Exception as exc:
        print(f"inference_log not readable: {exc}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # delta-rs/Arrow thread pools can abort the interpreter at teardown (as in the CLI)
