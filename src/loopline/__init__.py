"""loopline: the whole production loop of a model from one project folder and one loopline.yaml."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from loopline.errors import LooplineError

# OpenMP (scikit-learn's HistGradientBoosting, LightGBM) spins its threads between parallel regions by
# default: on a machine whose cores are busy with other work (a shared CI runner, a laptop serving while it
# trains) a 300-tree fit then runs 10-25x slower than with sleeping threads. Set before those libraries load;
# a value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from loopline.api import Environment, open
    from loopline.config import LooplineConfig, Project, load_project

__version__ = "0.1.0"
__all__ = ["Environment", "LooplineConfig", "LooplineError", "Project", "__version__", "load_project", "open"]

_LAZY = {
    "Environment": "loopline.api",
    "open": "loopline.api",
    "LooplineConfig": "loopline.config",
    "Project": "loopline.config",
    "load_project": "loopline.config",
}


def __getattr__(name: str) -> Any:  # lazy: `import loopline` and `loopline --help` must not pay for pydantic
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'loopline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
