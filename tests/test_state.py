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
