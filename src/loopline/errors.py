"""One root error for everything loopline reports to a user.

Every error carries a message that names the thing (file, key, column, value, expected) and an
optional ``hint`` that says what to do next. The CLI prints both and exits with ``exit_code``;
the HTTP server maps them to a 4xx body. Third-party exceptions are wrapped once, at the boundary.
"""

from __future__ import annotations


class LooplineError(Exception):
    """Root of every error loopline raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nHint: {self.hint}"
        return self.message


class ConfigError(LooplineError):
    """loopline.yaml (or an environment overlay) is missing, malformed or invalid."""

    exit_code = 2


class TableError(LooplineError):
    """A Delta table could not be read or written."""


class SqlError(LooplineError):
    """A SQL statement was refused or failed."""


class SourceError(LooplineError):
    """A data source is missing or unreadable."""


class ValidationFailed(LooplineError):
    """A batch failed the data contract (quality gate)."""

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None, report: object | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report


class HookError(LooplineError):
    """A user hook (``module:function``) could not be imported or raised."""


class HookConfigError(HookError, ConfigError):
    """A hook reference in loopline.yaml cannot be imported: a configuration error (exit 2)."""

    exit_code = 2


class TrainingError(LooplineError):
    """Training could not run."""


class GateError(LooplineError):
    """The champion/challenger gate could not run."""


class RegistryError(LooplineError):
    """A registry operation (promote, rollback, retire) was refused or failed."""


class BatchError(LooplineError):
    """Batch scoring could not run."""


class ServingError(LooplineError):
    """The server could not start or serve. ``status`` is the HTTP status a request meeting it gets:
    the subclasses in ``loopline.serving.errors`` name each (400, 401, 404, 413, 422, 503...)."""

    status: int = 500


class MonitoringError(LooplineError):
    """Monitoring could not run."""


class ReviewError(LooplineError):
    """An expert-review action (`loopline review`) was refused: unknown request id or key, bad label."""


class JobError(LooplineError):
    """A job could not be started or scheduled (unknown name, not importable, nothing scheduled)."""


class ScaffoldError(LooplineError):
    """`loopline init` refused a folder or a project name."""


class MissingDependency(LooplineError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed",
            hint=f'pip install "loopline[{extra}]"',
        )
