"""The project's state folder: private by default (0700 folders, 0600 files) and relocatable (a copied or moved
project uses its own artifacts, never the original folder's)."""

from __future__ import annotations

import stat
from pathlib import Path

from _support import run_cli


def test_state_is_created_private_to_the_owner(project_dir: Path) -> None:
    for command in (["ingest", "points"], ["run", "train"]):
        out = run_cli(*command, "--project", str(project_dir))
        assert out.returncode in (0, 4), (command, out.stdout, out.stderr)
    state = project_dir / ".loopline"
    found = {"dirs": 0, "files": 0}
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            continue
        if path.is_dir():
            found["dirs"] += 1
            assert mode == 0o700, f"{path}: {oct(mode)}"
        else:
            found["files"] += 1
            assert mode == 0o600, f"{path}: {oct(mode)}"
    assert (state / "dev" / "mlflow.db").is_file() and found["files"] > 10, found
    assert stat.S_IMODE((project_dir / "loopline.yaml").stat().st_mode) != 0o600  # project files untouched


def test_a_copied_project_uses_its_own_models_after_the_original_is_deleted(tmp_path: Path) -> None:
    """mlflow.db stored absolute artifact paths: a copy loaded (and would write) models in the original folder."""
    import shutil
    import sqlite3

    from _lifecycle import make_project
    from loopline import registry, tracking
    from loopline.config import load_project
    from loopline.training import train

    original = make_project(tmp_path / "original", {"training": {"refit": False}})
    train(original)
    registry.promote(original)
    moved = tmp_path / "moved"
    shutil.copytree(original.root, moved)
    shutil.rmtree(original.root)

    warned = run_cli("check", "--project", str(moved))  # check reads the registry, changes nothing
    assert warned.returncode == 0 and "the registry points outside the project" in warned.stderr
    assert str(tmp_path / "original") in warned.stderr
    out = run_cli("run", "batch", "--project", str(moved))
    assert out.returncode == 0, out.stderr
    copy = load_project(moved, "dev")
    from loopline.serving.model import load_version

    loaded = load_version(copy, "1")
    assert loaded is not None
    with sqlite3.connect(moved / ".loopline" / "dev" / "mlflow.db") as con:
        locations = [r[0] for r in con.execute("SELECT artifact_uri FROM runs")]
        locations += [r[0] for r in con.execute("SELECT artifact_location FROM experiments WHERE name = '/demo/dev'")]
    assert locations and all(str(moved) in loc and str(tmp_path / "original") not in loc for loc in locations)
    assert not (tmp_path / "original").exists(), "nothing was written to the original folder"
    assert tracking.alias_version(copy, "champion") is not None
    again = run_cli("check", "--project", str(moved)).stderr
    assert "points outside" not in again, again  # rewritten: no warning
