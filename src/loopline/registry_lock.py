"""The registry lock: promote, rollback, retire and copy of one environment run one at a time, across hosts.

* A local ``storage_root`` (the default, or a shared filesystem): the file ``<storage_root>/_registry.lock``
  created with ``O_CREAT | O_EXCL`` (atomic, NFS included), holding ``{owner, pid, host, expires}``.
* An object-store ``storage_root`` (``s3://``, ``gs://``, ``abfss://``): the registered-model tag
  ``loopline.registry_lock`` in the tracking store, with the same content, taken by compare-and-set (set, wait
  :data:`SETTLE_S`, re-read: the lock is ours only if the tag still names us).

A holder that is gone is not waited for: a lock whose ``expires`` has passed (:data:`TTL_S` after it was
taken), or whose process no longer exists on this host, is broken. Waiting for a live holder gives up after
``timeout`` seconds with a RegistryError naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopline.errors import RegistryError

if TYPE_CHECKING:
    from loopline.config import Project

LOCK_FILE = "_registry.lock"
LOCK_TAG = "loopline.registry_lock"
TTL_S = 300.0
SETTLE_S = 0.5
WAIT_S = 60.0


def _token(owner: str) -> dict[str, Any]:
    return {
        "token": uuid.uuid4().hex,
        "owner": owner,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "expires": time.time() + TTL_S,
    }


def _stale(holder: dict[str, Any] | None) -> bool:
    from loopline.jobs import pid_alive

    if not holder:
        return False
    if float(holder.get("expires", 0)) < time.time():
        return True
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)


def _busy(project: Project, holder: dict[str, Any] | None, where: str) -> RegistryError:
    h = holder or {}
    who = (
        f"{h.get('owner')} (pid {h.get('pid')} on {h.get('host')}, since {h.get('since')})" if h else "another command"
    )
    return RegistryError(
        f"the registry of {project.registered_model} is locked by {who}",
        hint=f"another promote/rollback/retire is running; retry when it ends (lock: {where})",
    )


@contextlib.contextmanager
def registry_lock(project: Project, owner: str, timeout: float = WAIT_S) -> Iterator[None]:
    """Hold the environment's registry lock for the body (see the module docstring)."""
    if "://" in project.storage_root and not project.storage_root.startswith("file://"):
        with _tag_lock(project, owner, timeout):
            yield
        return
    root = project.storage_root.removeprefix("file://")
    with _file_lock(Path(root) / LOCK_FILE, project, owner, timeout):
        yield


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _file_lock(path: Path, project: Project, owner: str, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = _token(owner)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            holder = _read(path)
            if _stale(holder):
                _break(path, holder)
                continue
            if time.monotonic() > deadline:
                raise _busy(project, holder, str(path)) from None
            time.sleep(0.1)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(mine))
        break
    try:
        yield
    finally:
        if (_read(path) or {}).get("token") == mine["token"]:
            path.unlink(missing_ok=True)


def _break(path: Path, holder: dict[str, Any] | None) -> None:
    """Remove a stale lock file; put it back if another waiter replaced it in between (it was not stale)."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if (_read(aside) or {}).get("token") != (holder or {}).get("token"):
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


@contextlib.contextmanager
def _tag_lock(project: Project, owner: str, timeout: float) -> Iterator[None]:
    from loopline import tracking

    c = tracking.client(project)
    name = project.registered_model
    mine = _token(owner)
    deadline = time.monotonic() + timeout

    def holder() -> dict[str, Any] | None:
        raw = (c.get_registered_model(name).tags or {}).get(LOCK_TAG)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    while True:
        current = holder()
        if current is None or _stale(current):
            c.set_registered_model_tag(name, LOCK_TAG, json.dumps(mine))
            time.sleep(SETTLE_S)
            if (holder() or {}).get("token") == mine["token"]:
                break
        elif time.monotonic() > deadline:
            raise _busy(project, current, f"registered-model tag {LOCK_TAG}")
        time.sleep(0.2)
    try:
        yield
    finally:
        if (holder() or {}).get("token") == mine["token"]:
            c.delete_registered_model_tag(name, LOCK_TAG)
