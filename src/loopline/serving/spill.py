"""The spill folder: prediction-log rows on local disk, waiting for a commit to ``inference_log``.

Rows land here in three cases: the table is unavailable (spilled after a failed commit), the memory
cap was passed, or the rows are *staged*: a worker that is not the committer leaves its flushed buffer
here as an Arrow IPC file (a write and a rename, ~1 ms). One process at a time holds an exclusive lock
on ``.committer.lock`` in the folder and commits everything staged as one commit: the server's
committer process (``serving.committer``), or, without it, one of the workers (with its own rows).
With several workers each committing its own buffer, the commits raced and each conflict made
delta-rs re-read the log. A worker takes the lock when it is free and no committer process runs (the
kernel releases a dead process's lock), so the log has a committer as long as one worker runs.

Files are written to a temporary name and renamed, so a reader never sees half a file; a file is
claimed by renaming it to ``<name>.claimed-<pid>`` (atomic: two readers cannot both take it) and
deleted only after its rows are committed. Claims of a dead process are put back.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import IO

import pyarrow as pa

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no shared committer, every worker commits its own rows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("loopline.serving.log")
LOCK_NAME = ".committer.lock"
MAX_LOOKUP_FILES = 100


class SpillFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_file: IO[bytes] | None = None
        # files put back from a dead committer's claims: it may have committed them before it died
        self.reclaimed: set[str] = set()

    # ------------------------------------------------------------------ files
    def put(self, table: pa.Table, *, rejected: bool = False) -> Path:
        """Write ``table`` as one Arrow IPC file, atomically (raises OSError); ``rejected``: straight into
        the ``rejected`` subfolder, for rows that can never be committed."""
        folder = self.path / "rejected" if rejected else self.path
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.arrow"
        tmp = folder / f".{name}.tmp"
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return folder / name

    def waiting(self) -> list[Path]:
        """Files waiting for a commit, oldest first."""
        if not self.path.is_dir():
            return []
        return sorted(self.path.glob("*.arrow"))

    def request_ids(self, wanted: set[str]) -> set[str]:
        """Which of ``wanted`` are rows of a file in the folder (waiting or claimed by a committer); the
        newest ``MAX_LOOKUP_FILES`` files only (a feedback call must not read a long outage's backlog)."""
        import pyarrow.compute as pc

        found: set[str] = set()
        if not self.path.is_dir():
            return found
        wanted_ids = pa.array(sorted(wanted), pa.string())
        for _ in range(2):  # a file committed (deleted) or claimed (renamed) while listing: list again
            try:
                files = sorted((p for p in self.path.glob("*.arrow*") if not p.name.startswith(".")), reverse=True)
                for p in files[:MAX_LOOKUP_FILES]:  # names start with the time: newest first
                    ids = self.read(p).column("request_id")
                    found.update(ids.filter(pc.is_in(ids, wanted_ids)).to_pylist())
                return found
            except (OSError, KeyError, pa.ArrowException):
                continue
        return found

    def count(self) -> int:
        try:
            return len(self.waiting())
        except OSError:
            return 0

    def claim(self, path: Path) -> Path | None:
        """Take ``path`` for this process (None: another process took it first)."""
        claimed = path.with_name(f"{path.name}.claimed-{os.getpid()}")
        try:
            os.replace(path, claimed)
        except OSError:
            return None
        return claimed

    @staticmethod
    def read(claimed: Path) -> pa.Table:
        with pa.memory_map(str(claimed)) as src:
            return pa.ipc.open_file(src).read_all()

    @staticmethod
    def original(claimed: Path) -> Path:
        return claimed.with_name(claimed.name.split(".claimed-")[0])

    def release(self, claimed: Path) -> None:
        """Put a claimed file back (its rows were not committed)."""
        os.replace(claimed, self.original(claimed))

    def reject(self, claimed: Path) -> Path:
        """Set aside a file that can never be committed (schema conflict), for a manual fix."""
        rejected = self.path / "rejected"
        rejected.mkdir(exist_ok=True)
        target = rejected / self.original(claimed).name
        os.replace(claimed, target)
        return target

    def reclaim_stale(self) -> None:
        """Files claimed by a process that is gone (or by this one, before a restart) are put back."""
        if not self.path.is_dir():
            return
        for p in self.path.glob("*.arrow.claimed-*"):
            tail = p.name.rsplit("-", 1)[1]
            pid = int(tail) if tail.isdigit() else -1
            if pid == os.getpid() or not alive(pid):
                try:
                    self.release(p)
                except OSError:
                    continue
                self.reclaimed.add(self.original(p).name)

    # ------------------------------------------------------------------ the committer lock
    @property
    def leading(self) -> bool:
        return self._lock_file is not None or fcntl is None

    def try_lead(self) -> bool:
        """Become the committer if no other live process is (non-blocking). True while this process leads."""
        if self.leading:
            return True
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            f = open(self.path / LOCK_NAME, "ab")  # noqa: SIM115 - held for the worker's life
        except OSError as exc:
            log.warning("cannot open the committer lock in %s (%s); this worker commits its own rows", self.path, exc)
            return True
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._lock_file = f
        self.reclaim_stale()  # a previous committer may have died holding claims
        return True

    def lead(self, timeout: float, step: float = 0.05) -> bool:
        """Wait up to ``timeout`` seconds to become the committer."""
        deadline = time.monotonic() + timeout
        while not self.try_lead():
            if time.monotonic() >= deadline:
                return False
            time.sleep(step)
        return True

    def resign(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
