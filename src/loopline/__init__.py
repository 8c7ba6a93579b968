"""loopline: the whole production loop of a model from one project folder and one loopline.yaml."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loopline.errors import LooplineError

if TYPE_CHECKING:
    from loopline.config import LooplineConfig, Project, load_project

__version__ = "0.1.0"
__all__ = ["LooplineConfig", "LooplineError", "Project", "__version__", "load_project"]


def __getattr__(name: str) -> Any:  # lazy: `loopline --help` must not pay for pydantic models
    if name in ("LooplineConfig", "Project", "load_project"):
        from loopline import config

        return getattr(config, name)
    raise AttributeError(f"module 'loopline' has no attribute {name!r}")
