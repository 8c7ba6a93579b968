"""The prediction log's committer process: ``loopline serve`` runs it beside its workers.

The workers only build their rows' Arrow tables and stage them in the spill folder; this process
holds the committer's lock (``spill.SpillFolder``) and commits every staged file to ``inference_log``
as one Delta commit every ``flush_interval``, and compacts the table now and then. Kept out of the
workers, the Delta writes (Python in delta-rs' bindings, its Tokio threads, compaction) neither take
the workers' GIL nor their event loop's time, and the process runs at a lower CPU priority (nice
``NICE``), which it can because nothing waits on it. If it dies, the workers notice at their next
flush and one of them takes the lock, as they do without it.

It ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group at once): it stops when its
stdin closes, which ``loopline serve`` does after uvicorn drained the requests and the workers staged
their last rows (and the kernel does if the server dies), then commits everything staged and exits:
0 when nothing is left (or another server's committer holds the lock and commits the files), 3 when
rows stay in the spill folder for the next start.

    python -m loopline.serving.committer   # LOOPLINE_PROJECT, LOOPLINE_ENV as for the workers
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from loopline.serving import process_logging, project_from_env
from loopline.serving.commit import LogCommitter
from loopline.serving.logger import FINAL_WAIT_SECONDS, spill_path
from loopline.serving.spill import SpillFolder

if TYPE_CHECKING:
    from loopline.config import Project

log = logging.getLogger("loopline.serving.log")
NICE = 10  # CPU priority below the workers': commits may wait, requests should not
READY = b"loopline-committer ready\n"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 120.0


def poll_seconds(project: Project) -> float:
    """How often staged files are committed: every ``flush_interval`` (0.1-10 s). A Delta append costs
    about the same for 1,000 rows as for 10,000 (12-36 ms of CPU, more the longer the log since its
    last checkpoint), so committing each worker flush separately cost the server ~40 us per row."""
    return max(0.1, min(10.0, project.config.serving.log.flush_interval.total_seconds()))


def run(project: Project, stop: threading.Event) -> int:
    """Commit staged files until ``stop`` is set, then everything left; 0 when the folder is empty."""
    from loopline.serving.metrics import LogMetrics
    from loopline.tables import DeltaStore

    cfg = project.config.serving.log
    folder = SpillFolder(spill_path(project))
    committer = LogCommitter(DeltaStore(project.storage_root, project.storage_options), cfg, folder, LogMetrics())
    poll = poll_seconds(project)
    waiting_logged = False
    while not stop.is_set():
        if folder.try_lead():
            _commit(committer)
        elif not waiting_logged:  # another server on the same project holds the lock: it commits our files
            log.info("another process commits %s; waiting for its lock", folder.path)
            waiting_logged = True
        stop.wait(poll)
    if not folder.lead(timeout=FINAL_WAIT_SECONDS):
        log.info("staged prediction-log rows are left to the process holding the committer lock")
        return 0
    try:
        before = -1
        while (left := len(folder.waiting()) + len(committer.pending)) and left != before:
            before = left  # commit until empty or until a commit makes no progress (the table is down)
            _commit(committer)
    finally:
        folder.resign()
    if left:
        log.error("%d prediction-log files stay in %s; they are committed at the next start", left, folder.path)
        return 3
    return 0


def _commit(committer: LogCommitter) -> None:
    """One commit of what is staged; nothing may end the process (the files stay for the next try)."""
    try:
        committer.commit(None)
    except Exception:
        log.exception("committing staged prediction-log rows failed; retrying at the next poll")


def main() -> None:
    from loopline.serving.metrics import mark_process_dead

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        os.nice(NICE)
    except OSError:
        pass
    process_logging()
    project = project_from_env()
    stop = threading.Event()

    def until_eof() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        stop.set()

    threading.Thread(target=until_eof, name="stdin", daemon=True).start()
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    try:
        code = run(project, stop)
    finally:
        mark_process_dead(os.getpid())
    sys.exit(code)


def start() -> subprocess.Popen[bytes] | None:
    """Start the committer process (the environment must name the project); None if it did not come up,
    in which case the workers commit the log themselves."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopline.serving.committer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    up, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_SECONDS)
    line = proc.stdout.readline() if up else b""  # the child has loaded the project (or exited: b"")
    proc.stdout.close()  # nothing more comes that way (it logs to stderr)
    if line != READY:
        proc.kill()
        proc.wait()
        log.warning("the prediction-log committer process did not start; the workers commit the log themselves")
        return None
    threading.Thread(target=_watch, args=(proc,), name="log-committer", daemon=True).start()
    return proc


def _watch(proc: subprocess.Popen[bytes]) -> None:
    """Reap the committer when it exits: a dead child not yet waited for stays a zombie, which the workers'
    liveness check (``kill(pid, 0)``) takes for alive, and they would stage rows that nobody commits."""
    from loopline.serving.metrics import mark_process_dead

    code = proc.wait()
    mark_process_dead(proc.pid)  # its live gauges (spill files) leave /metrics, also after a SIGKILL
    assert proc.stdin is not None
    if not proc.stdin.closed:  # not stopped by `stop`
        log.error("the prediction-log committer process exited (code %d); the workers commit the log themselves", code)


def stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> int:
    """Close the committer's stdin (it commits what is staged and exits) and wait for it."""
    assert proc.stdin is not None
    proc.stdin.close()
    t0 = time.monotonic()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        log.error(
            "the prediction-log committer did not finish in %.0f s; staged rows are committed at the next start",
            timeout,
        )
    log.info("prediction-log committer stopped (exit %d, %.1f s)", code, time.monotonic() - t0)
    return code


if __name__ == "__main__":
    main()
