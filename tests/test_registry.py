"""Registry lifecycle: promote, gate refusal, force, rollback, retire, history, copy between environments."""

from __future__ import annotations

from pathlib import Path

import pytest

from _lifecycle import make_project, one_thread  # noqa: F401  (fixture, used by pytestmark)
from loopline import registry, tracking
from loopline.config import Project
from loopline.errors import RegistryError
from loopline.training import train

pytestmark = pytest.mark.usefixtures("one_thread")


def champion(p: Project) -> str | None:
    mv = tracking.alias_version(p, "champion")
    return None if mv is None else str(mv.version)


def test_promote_refuse_force_rollback_retire_with_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPLINE_ACTOR", "alice")
    p = make_project(tmp_path, {"training": {"refit": False}})
    with pytest.raises(RegistryError, match=r"registered model 'dev.demo' has no @challenger to promote"):
        registry.promote(p)
    with pytest.raises(RegistryError, match=r"registered model 'dev.demo' has no @champion"):
        tracking.require_champion(p)

    v1 = train(p)
    assert v1.gate.passed and v1.version == "1"
    e = registry.promote(p)
    assert (e.action, e.from_version, e.to_version, e.gate_verdict, e.actor) == (
        "promote",
        None,
        "1",
        "passed",
        "alice",
    )
    assert champion(p) == "1" and tracking.alias_version(p, "challenger") is None
    with pytest.raises(RegistryError, match=r"version 1 is already @champion of dev.demo"):
        registry.promote(p, version=1)

    worse = train(p, params_override={"max_iter": 1})
    assert not worse.gate.passed and champion(p) == "1"
    with pytest.raises(
        RegistryError,
        match=r"version 2 of dev.demo has not passed the gate \(verdict: failed; "
        r"failed rules: min_improvement.mae",
    ):
        registry.promote(p, version=2)
    with pytest.raises(RegistryError, match=r"a forced promotion of dev.demo needs a reason"):
        registry.promote(p, version=2, force=True)
    with pytest.raises(RegistryError, match=r"registered model 'dev.demo' has no version 99") as exc:
        registry.promote(p, version=99)
    assert exc.value.hint == "its versions: 1, 2"

    better = train(p, params_override={"max_iter": 60})
    assert better.gate.passed
    registry.promote(p)
    assert champion(p) == "3"

    back = registry.rollback(p, reason="latency regression")
    assert (back.action, back.from_version, back.to_version, back.reason) == (
        "rollback",
        "3",
        "1",
        "latency regression",
    )
    assert champion(p) == "1"
    with pytest.raises(
        RegistryError,
        match=r"registered model 'dev.demo' has no previous champion to roll back to "
        r"in the audit log \(@champion is version 1\)",
    ):
        registry.rollback(p)

    forced = registry.promote(p, version=2, force=True, reason="hotfix for a known data issue")
    assert (forced.action, forced.gate_verdict, forced.from_version) == ("force", "failed", "1")
    assert registry.rollback(p).to_version == "1"

    retired = registry.retire(p, 1, reason="superseded")
    assert [(r.alias, r.from_version, r.to_version, r.action) for r in retired] == [("champion", "1", None, "retire")]
    assert champion(p) is None
    assert tracking.client(p).get_model_version("dev.demo", "1").tags["loopline.retired"] == "true"
    with pytest.raises(RegistryError, match=r"version 1 of dev.demo is retired; a retired version cannot be promoted"):
        registry.promote(p, version=1, force=True, reason="x")
    with pytest.raises(RegistryError, match=r"version 1 of dev.demo is already retired"):
        registry.retire(p, 1)
    # rollbacks pop the champion stack: 3 was rolled back from, 1 is retired, so nothing is left to roll back to
    with pytest.raises(
        RegistryError,
        match=r"no previous champion to roll back to in the audit log \(it has no "
        r"@champion\)",
    ):
        registry.rollback(p)
    assert registry.promote(p, version=3).from_version is None

    rows = registry.history(p)
    assert [(r.action, r.from_version, r.to_version) for r in rows] == [
        ("promote", None, "3"),
        ("retire", "1", None),
        ("rollback", "2", "1"),
        ("force", "1", "2"),
        ("rollback", "3", "1"),
        ("promote", "1", "3"),
        ("promote", None, "1"),
    ]
    assert {r.actor for r in rows} == {"alice"} and {r.model for r in rows} == {"dev.demo"}
    assert [r.action for r in registry.history(p, limit=2)] == ["promote", "retire"]
    from loopline.tables import DeltaStore

    table = DeltaStore(p.storage_root).read("registry_events")
    assert table.schema.field("timestamp").type.tz == "UTC" and table.num_rows == 7
    assert table.schema.names == [
        "timestamp",
        "actor",
        "model",
        "alias",
        "from_version",
        "to_version",
        "action",
        "reason",
        "gate_verdict",
        "event_id",
        "state",
    ]
    assert set(table.column("state").to_pylist()) == {"done"}


def test_copy_staging_champion_to_prod_separate_registries(tmp_path: Path) -> None:
    staging = make_project(tmp_path, env="staging", write_features=("staging", "prod"))
    prod = make_project(tmp_path, env="prod", write_features=())
    with pytest.raises(RegistryError, match=r"registered model 'staging.demo' has no @champion"):
        registry.copy(staging, prod)
    train(staging)
    registry.promote(staging)
    from typer.testing import CliRunner

    from loopline.cli import _register, app

    _register()
    runner = CliRunner()
    half = runner.invoke(app, ["promote", "--from", "staging", "--project", str(tmp_path)])
    assert isinstance(half.exception, RegistryError) and half.exception.message == "--from and --to go together"
    out = runner.invoke(app, ["promote", "--from", "staging", "--to", "prod", "--project", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    result = __import__("json").loads(out.stdout)
    assert result["promoted"] and (result["model"], result["version"]) == ("prod.demo", "1")
    assert result["gate"]["verdict"] == "passed" and result["gate"]["n_test"] == 80
    assert result["event"]["action"] == "copy"
    assert champion(prod) == "1"
    mv = tracking.client(prod).get_model_version("prod.demo", "1")
    assert mv.tags["loopline.copied_from"] == "staging.demo/1"
    assert mv.tags["loopline.gate.verdict"] == "passed"
    (event,) = registry.history(prod)
    assert (event.action, event.to_version, event.reason) == ("copy", "1", "copied from staging.demo version 1")
    assert registry.history(staging)[0].model == "staging.demo"


def test_copy_with_a_shared_registry_uses_copy_model_version(tmp_path: Path) -> None:
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    envs = {"staging": {"tracking_uri": shared}, "prod": {"tracking_uri": shared}}
    import shutil

    from _lifecycle import template_db

    shutil.copy(template_db(), tmp_path / "shared.db")
    staging = make_project(tmp_path, {"environments": envs}, env="staging", write_features=("staging", "prod"))
    prod = make_project(tmp_path, {"environments": envs}, env="prod", write_features=())
    train(staging)
    registry.promote(staging)
    result = registry.copy(staging, prod, reason="release 1")
    assert result.promoted and champion(prod) == "1" and champion(staging) == "1"
    mv = tracking.client(prod).get_model_version("prod.demo", "1")
    assert mv.source.startswith("models:/")
    assert registry.history(prod)[0].reason == "release 1"


def test_copy_refused_by_the_gate_on_prod_data_leaves_prod_unchanged(tmp_path: Path) -> None:
    from _lifecycle import features_table
    from loopline.tables import DeltaStore

    staging = make_project(tmp_path, env="staging", write_features=("staging", "prod"))
    prod = make_project(tmp_path, env="prod", write_features=())
    DeltaStore(prod.storage_root).overwrite("features", features_table(seed=9, shift=40.0))
    train(staging)
    registry.promote(staging)
    result = registry.copy(staging, prod)
    assert not result.promoted and result.event is None
    assert result.gate.failed_rules[0].startswith("threshold.mae: mae ")
    assert champion(prod) is None and registry.history(prod) == []
    mv = tracking.client(prod).get_model_version("prod.demo", result.version)
    assert mv.tags["loopline.gate.verdict"] == "failed"


def _champion_plus_two_passed(tmp_path: Path) -> Project:
    """v1 champion; v2 and v3 passed the gate against it."""
    p = make_project(tmp_path, {"training": {"refit": False}})
    train(p)
    registry.promote(p)
    assert train(p, params_override={"max_iter": 60}).gate.passed
    assert train(p, params_override={"max_iter": 80}).gate.passed
    return p


def test_promote_killed_after_the_alias_moved_is_reconciled_and_rolled_back(tmp_path: Path) -> None:
    """SIGKILL right after the alias moved used to leave the move unaudited (rollback then went the wrong way)."""
    import json

    from _support import run_cli

    p = _champion_plus_two_passed(tmp_path)
    root = str(p.root)
    killed = run_cli("promote", "--version", "3", "--project", root, env={"LOOPLINE_TEST_CRASH_AFTER": "alias_moved"})
    assert killed.returncode == 137, killed.stderr
    assert champion(p) == "3"
    assert (tmp_path / ".loopline" / "dev" / "tables" / "_registry.lock").exists()  # left by the dead process

    out = run_cli("history", "--json", "--project", root)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["action"], r["from_version"], r["to_version"], r["state"]) for r in rows] == [
        ("promote", "1", "3", "done"),
        ("promote", None, "1", "done"),
    ]
    back = run_cli("rollback", "--json", "--project", root)
    assert back.returncode == 0, back.stderr
    assert (json.loads(back.stdout)["from_version"], json.loads(back.stdout)["to_version"]) == ("3", "1")
    assert champion(p) == "1"


def test_a_move_outside_loopline_is_recorded_by_the_next_command(tmp_path: Path) -> None:
    p = _champion_plus_two_passed(tmp_path)
    tracking.client(p).set_registered_model_alias("dev.demo", "champion", "2")  # e.g. the MLflow UI
    event = registry.rollback(p)
    assert (event.from_version, event.to_version) == ("2", "1")
    rows = registry.history(p)
    assert [(r.action, r.from_version, r.to_version) for r in rows] == [
        ("rollback", "2", "1"),
        ("reconcile", "1", "2"),
        ("promote", None, "1"),
    ]
    assert (
        rows[1].reason
        == "@champion found at version 2 while the audit log says version 1: moved outside loopline's audit"
    )


def test_concurrent_promotes_are_serialised_and_record_the_true_from_version(tmp_path: Path) -> None:
    """Two promotes at once used to read the same champion and both record from_version 1."""
    import subprocess

    from _support import VENV_BIN

    p = _champion_plus_two_passed(tmp_path)
    import os

    env = {**os.environ, "LOOPLINE_TEST_PAUSE_AFTER": "champion_read", "LOOPLINE_TEST_PAUSE_S": "2"}
    procs = [
        subprocess.Popen(
            [str(VENV_BIN / "loopline"), "promote", "--version", v, "--project", str(p.root)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in ("2", "3")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    first, second = reversed([(r.from_version, r.to_version) for r in registry.history(p)[:2]])
    assert first[0] == "1" and second[0] == first[1], (first, second)
    assert champion(p) == second[1]


def test_the_object_store_lock_serialises_holders_across_processes(tmp_path: Path) -> None:
    """The registered-model tag lock (storage roots on object stores): holders in three processes never overlap,
    and the tag is gone afterwards."""
    import itertools
    import json
    import os
    import subprocess
    import sys
    import textwrap

    p = make_project(tmp_path, {"gate": {"thresholds": None, "min_improvement": None}})
    train(p)  # the registered model carries the tag
    log = tmp_path / "holds.jsonl"
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from loopline.config import load_project
        from loopline.registry_lock import _tag_lock
        p = load_project({str(tmp_path)!r}, "dev")
        with _tag_lock(p, sys.argv[1], 60):
            t0 = time.time(); time.sleep(1.0)
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps([t0, time.time()]) + "\\n")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", script, f"w{i}"], env=env) for i in range(3)]
    assert [pr.wait(timeout=120) for pr in procs] == [0, 0, 0]
    holds = sorted(json.loads(line) for line in log.read_text().splitlines())
    assert len(holds) == 3
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(holds)), holds
    tags = tracking.client(p).get_registered_model(p.registered_model).tags
    assert "loopline.registry_lock" not in tags
