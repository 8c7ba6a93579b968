"""The model registry lifecycle: promote, rollback, retire, history, and copy between environments.

Promotion moves MLflow aliases (``champion``, ``challenger``) on the environment's registered model;
stages are not used (deprecated in MLflow 3). Every move of ``champion`` (promote, force, rollback,
retire, copy) is recorded in the ``registry_events`` Delta table: who, when, model, alias,
version from -> to, action, reason and the gate verdict of the version moved to. Rollback replays that
audit log to find the previous champion.

Audit first: the row is appended ``pending`` *before* the alias moves and marked ``done`` after it (or
``aborted`` when the move failed), so a command killed in between leaves its intent. Every command reconciles
first (:func:`reconcile`): a ``pending`` row becomes ``done`` when the alias is where it says, else ``aborted``;
and when ``@champion`` is not where the audit log says (moved outside loopline, e.g. in the MLflow UI), a
``reconcile`` row records the move that was found. All of it runs under the registry lock
(:mod:`loopline.registry_lock`), so two commands never read the same "current" champion.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loopline import tracking
from loopline.errors import RegistryError, TableError
from loopline.registry_lock import registry_lock
from loopline.testhooks import crash_point

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from loopline.config import Project
    from loopline.evaluation import GateResult

EVENTS = "registry_events"
RETIRED_TAG = "loopline.retired"
VERDICT_TAG = "loopline.gate.verdict"
COPIED_FROM_TAG = "loopline.copied_from"


@dataclass(frozen=True)
class RegistryEvent:
    """One audit row of ``registry_events`` (also what promote/rollback/retire return)."""

    timestamp: datetime
    actor: str
    model: str
    alias: str
    from_version: str | None
    to_version: str | None
    action: str
    reason: str
    gate_verdict: str
    event_id: str = ""
    state: str = "done"
    """``pending`` (written before the alias moved), ``done``, or ``aborted`` (the move did not happen)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timestamp"] = self.timestamp.isoformat()
        return d


@dataclass
class CopyResult:
    """``promote --from A --to B``: the source champion, the copy in B, B's gate verdict, the move."""

    source_model: str
    source_version: str
    model: str
    version: str
    gate: GateResult
    event: RegistryEvent | None

    @property
    def promoted(self) -> bool:
        return self.event is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_model": self.source_model,
            "source_version": self.source_version,
            "model": self.model,
            "version": self.version,
            "promoted": self.promoted,
            "gate": self.gate.to_dict(),
            "event": self.event.to_dict() if self.event else None,
        }


def actor() -> str:
    """``LOOPLINE_ACTOR``, else the OS user, else ``unknown``."""
    env = os.environ.get("LOOPLINE_ACTOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


# ----------------------------------------------------------------------------- audit log
def _store(project: Project) -> Any:
    from loopline.tables import DeltaStore

    return DeltaStore(project.storage_root, project.storage_options)


def events_schema() -> Any:
    """The ``registry_events`` table's schema (docs/contracts.md)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("timestamp", pa.timestamp("us", tz="UTC")),
            ("actor", pa.string()),
            ("model", pa.string()),
            ("alias", pa.string()),
            ("from_version", pa.string()),
            ("to_version", pa.string()),
            ("action", pa.string()),
            ("reason", pa.string()),
            ("gate_verdict", pa.string()),
            ("event_id", pa.string()),
            ("state", pa.string()),
        ]
    )


def _append(project: Project, events: list[RegistryEvent]) -> None:
    import pyarrow as pa

    rows = [asdict(e) for e in events]
    table = pa.Table.from_pylist(rows, schema=events_schema())
    _store(project).append(EVENTS, table, action=events[0].action, model=events[0].model)


def _events(project: Project) -> list[RegistryEvent]:
    """This environment's registered model's audit rows, oldest first."""
    store = _store(project)
    if not store.exists(EVENTS):
        return []
    fields = [f.name for f in dataclasses.fields(RegistryEvent)]
    rows = store.read(EVENTS).to_pylist()
    rows = [r for r in rows if r.get("model") == project.registered_model]
    rows.sort(key=lambda r: r["timestamp"])
    out = []
    for r in rows:
        values: dict[str, Any] = {
            k: r.get(k) if k in ("timestamp", "from_version", "to_version") else (r.get(k) or "") for k in fields
        }
        values["state"] = values["state"] or "done"  # rows written before audit-first
        out.append(RegistryEvent(**values))
    return out


def history(project: Project, limit: int | None = None, reconciled: bool = False) -> list[RegistryEvent]:
    """The audit log of the environment's registered model, newest first (``reconciled``: after
    :func:`reconcile`, under the registry lock)."""
    if reconciled:
        with registry_lock(project, actor()):
            reconcile(project)
    rows = list(reversed(_events(project)))
    return rows[:limit] if limit else rows


def _set_state(project: Project, events: list[RegistryEvent], state: str) -> None:
    import pyarrow as pa

    ids = pa.table({"event_id": [e.event_id for e in events], "state": [state] * len(events)})
    _store(project).update_matching(EVENTS, ids, ["event_id"], ["state"])


def reconcile(project: Project) -> list[RegistryEvent]:
    """Settle the audit log with the aliases (call under the registry lock): each ``pending`` row becomes
    ``done`` when its alias is where it says, else ``aborted``; a ``@champion`` that is not where the log says
    gets a ``reconcile`` row naming what was found. Returns the rows settled or written."""
    events = _events(project)
    settled: list[RegistryEvent] = []
    aliases: dict[str, str | None] = {}

    def at(alias: str) -> str | None:
        if alias not in aliases:
            mv = tracking.alias_version(project, alias)
            aliases[alias] = str(mv.version) if mv is not None else None
        return aliases[alias]

    for e in events:
        if e.state != "pending" or not e.event_id:
            continue
        state = "done" if not e.alias or at(e.alias) == e.to_version else "aborted"
        _set_state(project, [e], state)
        settled.append(replace(e, state=state))
    states = {e.event_id: e.state for e in settled}
    done = [e for e in events if states.get(e.event_id, e.state) == "done" and e.alias == tracking.CHAMPION]
    expected = done[-1].to_version if done else None
    actual = at(tracking.CHAMPION)
    if actual != expected:
        verdict = _verdict(get_version(project, actual)) if actual else ""
        found = f"version {actual}" if actual else "no version"
        why = (
            f"@{tracking.CHAMPION} found at {found} while the audit log says "
            f"{'version ' + expected if expected else 'none'}: moved outside loopline's audit"
        )
        row = _event(project, "reconcile", expected, actual, why, verdict)
        _append(project, [row])
        settled.append(row)
    return settled


def _move(project: Project, c: MlflowClient, alias: str, to: str | None, events: list[RegistryEvent]) -> None:
    """Audit first (call under the registry lock): append the rows ``pending``, set (or delete, ``to=None``) the
    alias, mark the rows ``done`` (``aborted`` when the move failed). A crash in between is settled by the next
    command's :func:`reconcile`."""
    from mlflow.exceptions import MlflowException

    name = project.registered_model
    pending = [replace(e, state="pending") for e in events]
    try:
        _append(project, pending)
    except TableError as exc:
        raise RegistryError(
            f"the audit row could not be written, @{alias} of {name} left unchanged: {exc.message}", hint=exc.hint
        ) from None
    try:
        if to is None:
            c.delete_registered_model_alias(name, alias)
        else:
            c.set_registered_model_alias(name, alias, to)
    except MlflowException as exc:
        _set_state(project, pending, "aborted")
        raise RegistryError(f"cannot move @{alias} of {name} to version {to}: {exc.message}") from None
    crash_point("alias_moved")
    try:
        _set_state(project, pending, "done")
    except TableError:
        pass  # the alias moved and the pending row says so: the next command's reconcile marks it done


def _event(
    project: Project,
    action: str,
    from_v: str | None,
    to_v: str | None,
    reason: str | None,
    verdict: str,
    alias: str = tracking.CHAMPION,
) -> RegistryEvent:
    return RegistryEvent(
        timestamp=datetime.now(UTC),
        actor=actor(),
        model=project.registered_model,
        alias=alias,
        from_version=from_v,
        to_version=to_v,
        action=action,
        reason=reason or "",
        gate_verdict=verdict,
        event_id=uuid.uuid4().hex,
    )


# ----------------------------------------------------------------------------- versions
def get_version(project: Project, version: str | int) -> ModelVersion:
    """A model version of the environment's registered model; RegistryError naming both when unknown."""
    from mlflow.exceptions import MlflowException

    c = tracking.client(project)
    name = project.registered_model
    try:
        return c.get_model_version(name, str(version))
    except MlflowException:
        known = _known_versions(c, name)
        raise RegistryError(
            f"registered model {name!r} has no version {version}",
            hint=f"its versions: {', '.join(known)}"
            if known
            else f"{name!r} has no versions yet: run `loopline run train --env {project.env}`",
        ) from None


def _known_versions(c: MlflowClient, name: str) -> list[str]:
    try:
        found = c.search_model_versions(f"name = '{name}'")
    except Exception:
        return []
    return sorted((str(mv.version) for mv in found), key=int)


def _verdict(mv: ModelVersion) -> str:
    return str((mv.tags or {}).get(VERDICT_TAG, "not gated"))


def _retired(mv: ModelVersion) -> bool:
    return str((mv.tags or {}).get(RETIRED_TAG, "")).lower() == "true"


# ----------------------------------------------------------------------------- promote
def promote(
    project: Project, version: str | int | None = None, force: bool = False, reason: str | None = None
) -> RegistryEvent:
    """Move ``champion`` to the challenger (or to ``version``), which must have passed the gate.

    ``force`` skips the gate verdict (not the retired check) and requires a ``reason``. Under the registry
    lock, after :func:`reconcile`.
    """
    with registry_lock(project, actor()):
        reconcile(project)
        return _promote(project, version, force, reason)


def _promote(project: Project, version: str | int | None, force: bool, reason: str | None) -> RegistryEvent:
    name = project.registered_model
    if force and not (reason and reason.strip()):
        raise RegistryError(
            f"a forced promotion of {name} needs a reason", hint='pass --reason "why the gate is overridden"'
        )
    c = tracking.client(project)
    if version is None:
        challenger = tracking.alias_version(project, tracking.CHALLENGER)
        if challenger is None:
            raise RegistryError(
                f"registered model {name!r} has no @{tracking.CHALLENGER} to promote",
                hint=f"train a model that passes the gate (loopline run train --env {project.env}) or pass --version N",
            )
        mv = challenger
    else:
        mv = get_version(project, version)
    v = str(mv.version)
    if _retired(mv):
        raise RegistryError(
            f"version {v} of {name} is retired; a retired version cannot be promoted",
            hint="train a new version, or promote another one (see `loopline history`)",
        )
    verdict = _verdict(mv)
    if verdict != "passed" and not force:
        rules = (mv.tags or {}).get("loopline.gate.failed_rules")
        why = f"; failed rules: {'; '.join(json.loads(rules))}" if rules and rules != "[]" else ""
        raise RegistryError(
            f"version {v} of {name} has not passed the gate (verdict: {verdict}{why})",
            hint=f'promote a version that passed, or override: loopline promote --version {v} --force --reason "..."',
        )
    current = tracking.alias_version(project, tracking.CHAMPION)
    cur = str(current.version) if current is not None else None
    crash_point("champion_read")
    if cur == v:
        raise RegistryError(f"version {v} is already @{tracking.CHAMPION} of {name}", hint="nothing to promote")
    event = _event(project, "force" if force else "promote", cur, v, reason, verdict)
    _move(project, c, tracking.CHAMPION, v, [event])
    challenger = tracking.alias_version(project, tracking.CHALLENGER)
    if challenger is not None and str(challenger.version) == v:
        c.delete_registered_model_alias(name, tracking.CHALLENGER)
    return event


# ----------------------------------------------------------------------------- rollback
def _champion_stack(events: list[RegistryEvent]) -> list[str]:
    """Replay the audit log into the stack of champions (top = latest)."""
    stack: list[str] = []
    for e in events:
        if e.alias != tracking.CHAMPION or e.state != "done":
            continue
        if e.action == "rollback":
            if stack and stack[-1] == e.from_version:
                stack.pop()
            if e.to_version and (not stack or stack[-1] != e.to_version):
                stack.append(e.to_version)
        elif e.action == "retire":
            stack = [v for v in stack if v != e.from_version]
        elif e.to_version:
            stack.append(e.to_version)
    return stack


def rollback(project: Project, reason: str | None = None) -> RegistryEvent:
    """Point ``champion`` back to the previous champion recorded in the audit log (under the registry lock,
    after :func:`reconcile`)."""
    with registry_lock(project, actor()):
        reconcile(project)
        return _rollback(project, reason)


def _rollback(project: Project, reason: str | None) -> RegistryEvent:
    name = project.registered_model
    c = tracking.client(project)
    current = tracking.alias_version(project, tracking.CHAMPION)
    cur = str(current.version) if current is not None else None
    stack = _champion_stack(_events(project))
    if stack and stack[-1] == cur:
        stack.pop()
    target: ModelVersion | None = None
    for v in reversed(stack):
        if v == cur:
            continue
        try:
            mv = c.get_model_version(name, v)
        except Exception:
            continue
        if not _retired(mv):
            target = mv
            break
    if target is None:
        what = f"@{tracking.CHAMPION} is version {cur}" if cur else f"it has no @{tracking.CHAMPION}"
        raise RegistryError(
            f"registered model {name!r} has no previous champion to roll back to in the audit log ({what})",
            hint="promote a specific version instead: loopline promote --version N",
        )
    to = str(target.version)
    event = _event(project, "rollback", cur, to, reason, _verdict(target))
    _move(project, c, tracking.CHAMPION, to, [event])
    return event


# ----------------------------------------------------------------------------- retire
def retire(project: Project, version: str | int, reason: str | None = None) -> list[RegistryEvent]:
    """Remove every alias of ``version`` and tag it ``loopline.retired=true``; it can no longer be promoted."""
    with registry_lock(project, actor()):
        reconcile(project)
        return _retire(project, version, reason)


def _retire(project: Project, version: str | int, reason: str | None) -> list[RegistryEvent]:
    from mlflow.exceptions import MlflowException

    name = project.registered_model
    mv = get_version(project, version)
    v = str(mv.version)
    if _retired(mv):
        raise RegistryError(f"version {v} of {name} is already retired")
    c = tracking.client(project)
    try:
        c.set_model_version_tag(name, v, RETIRED_TAG, "true")
    except MlflowException as exc:
        raise RegistryError(f"cannot tag version {v} of {name} retired: {exc.message}") from None
    verdict = _verdict(mv)
    aliases = sorted(mv.aliases or [])
    if not aliases:
        event = _event(project, "retire", v, None, reason, verdict, alias="")
        _append(project, [event])
        return [event]
    events = []
    for alias in aliases:
        event = _event(project, "retire", v, None, reason, verdict, alias=alias)
        _move(project, c, alias, None, [event])
        events.append(event)
    return events


# ----------------------------------------------------------------------------- copy between environments
def copy(project_from: Project, project_to: Project, reason: str | None = None) -> CopyResult:
    """Copy the source environment's champion into the target's registered model, gate it on the target's
    data, and make it the target's champion when it passes."""
    from loopline.evaluation import gate
    from loopline.training import test_rows

    src = tracking.require_champion(project_from)
    src_name, src_v = project_from.registered_model, str(src.version)
    if _retired(src):
        raise RegistryError(f"version {src_v} of {src_name} is retired; it cannot be copied")
    test_df, _ = test_rows(project_to)  # fail early (nothing copied) when the target has no usable data
    new = _copy_version(project_from, project_to, src_name, src_v)
    result = gate(project_to, new, test_df)
    event = None
    if result.passed:
        with registry_lock(project_to, actor()):
            reconcile(project_to)
            current = tracking.alias_version(project_to, tracking.CHAMPION)
            cur = str(current.version) if current is not None else None
            why = reason or f"copied from {src_name} version {src_v}"
            event = _event(project_to, "copy", cur, new, why, result.verdict)
            c = tracking.client(project_to)
            _move(project_to, c, tracking.CHAMPION, new, [event])
            challenger = tracking.alias_version(project_to, tracking.CHALLENGER)
            if challenger is not None and str(challenger.version) == new:
                c.delete_registered_model_alias(project_to.registered_model, tracking.CHALLENGER)
    return CopyResult(src_name, src_v, project_to.registered_model, new, result, event)


def _copy_version(project_from: Project, project_to: Project, src_name: str, src_v: str) -> str:
    """Copy with ``copy_model_version`` when both share a registry; else via the artifacts into the target."""
    from mlflow.exceptions import MlflowException

    dst = project_to.registered_model
    same = tracking.db_uri(project_from.registry_uri) == tracking.db_uri(project_to.registry_uri)
    try:
        if same:
            c = tracking.client(project_to)
            mv = c.copy_model_version(f"models:/{src_name}/{src_v}", dst)
        else:
            mv = _copy_across(project_from, project_to, src_name, src_v)
        tracking.client(project_to).set_model_version_tag(dst, str(mv.version), COPIED_FROM_TAG, f"{src_name}/{src_v}")
    except MlflowException as exc:
        raise RegistryError(f"copying {src_name} version {src_v} to {dst} failed: {exc.message}") from None
    return str(mv.version)


def _copy_across(project_from: Project, project_to: Project, src_name: str, src_v: str) -> ModelVersion:
    """The source version's artifacts, read through the source environment's client, logged as a run of the
    target's experiment and registered there (each side through its own Context: no global URI switched)."""
    from mlflow.exceptions import MlflowException

    from loopline.context import context

    with tempfile.TemporaryDirectory(prefix="loopline-copy-") as tmp:
        local = tracking.download(context(project_from), f"models:/{src_name}/{src_v}", dst_path=tmp)
        c = tracking.client(project_to)
        exp = tracking.experiment_id(project_to)
        run = c.create_run(
            exp,
            run_name=f"copy-{src_name}-v{src_v}",
            tags={COPIED_FROM_TAG: f"{src_name}/{src_v}", "loopline.env": project_to.env},
        )
        c.log_artifacts(run.info.run_id, local, "model")
        c.set_terminated(run.info.run_id)
    dst = project_to.registered_model
    try:
        c.create_registered_model(dst)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return c.create_model_version(dst, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
