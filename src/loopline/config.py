"""Typed project configuration: ``loopline.yaml``.

Parsed once at the edge (:func:`load_project`), interpolated from the environment (``${VAR}``,
``${VAR:-default}``), overlaid by the selected environment, validated with pydantic
(``extra="forbid"``). Every error names the file, the dotted key, the bad value and what was
expected. Stages receive their own sub-config object, never a dict.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from loopline.errors import ConfigError

CONFIG_FILE = "loopline.yaml"
_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"
_HOOK = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: Any) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w`` or a number of seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    raise ValueError("a duration like 90d, 12h, 30m or 45s")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
HookRef = Annotated[str, Field(pattern=_HOOK, description="A `package.module:function` reference.")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- model & data
class ModelSpec(_Model):
    name: str = Field(pattern=_NAME, description="Model name; registered as `<env>.<name>` by default.")
    task: Literal["regression", "classification"] = Field("regression", description="Learning task.")
    target: str = Field(description="Label column in the features table.")
    keys: list[str] = Field(default_factory=list, description="Columns identifying a row (kept in predictions).")
    time_column: str | None = Field(None, description="Event-time column, used for time splits and windows.")
    features: list[str] | None = Field(
        None, description="Model input columns; default: every feature column but keys, target, time and `_` columns."
    )
    positive_label: str | int | bool | None = Field(
        None,
        description="Binary classification: the positive class (binary metrics, the `probability` column); "
        "default: the second class in sorted order.",
    )
    threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Binary classification: predict the positive class when its probability is >= this "
        "(default: the estimator's own predict, i.e. 0.5).",
    )

    def input_columns(self, available: list[str]) -> list[str]:
        """The model's input columns, in order, given the columns a features table has."""
        if self.features is not None:
            return list(self.features)
        skip = {self.target, self.time_column, *self.keys}
        return [c for c in available if c not in skip and not c.startswith("_")]


class SourceConfig(_Model):
    kind: Literal["csv", "parquet", "delta", "sql"] = Field(description="How the source is read.")
    path: str | None = Field(None, description="File, glob or Delta table path (relative to the project, or a URI).")
    query: str | None = Field(None, description="DuckDB SQL for `kind: sql`; `$name` parameters come from `--param`.")
    files: dict[str, str] = Field(
        default_factory=dict, description="For `kind: sql`: files registered as views by name before the query runs."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Reader options (e.g. CSV `delim`, `header`).")

    @model_validator(mode="after")
    def _needs(self) -> SourceConfig:
        if self.kind == "sql" and not self.query:
            raise ValueError("a `query` (kind sql needs one)")
        if self.kind != "sql" and not self.path:
            raise ValueError(f"a `path` (kind {self.kind} needs one)")
        return self


class ColumnCheck(_Model):
    type: Literal["int", "float", "str", "bool", "datetime", "date"] | None = Field(None, description="Column type.")
    nullable: bool = Field(True, description="Whether nulls are allowed.")
    min: float | None = Field(None, description="Smallest allowed value (inclusive).")
    max: float | None = Field(None, description="Largest allowed value (inclusive).")
    allowed: list[Any] | None = Field(None, description="The only values allowed.")
    unique: bool = Field(False, description="Values must be unique within the batch.")
    regex: str | None = Field(None, description="Values (as strings) must fully match this pattern.")

    @model_validator(mode="after")
    def _regex_compiles(self) -> ColumnCheck:
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"a valid regular expression ({exc})") from None
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min <= max (min {self.min} > max {self.max})")
        return self


class RowCount(_Model):
    min: int | None = Field(None, ge=0, description="Fewest rows a batch may have.")
    max: int | None = Field(None, ge=0, description="Most rows a batch may have.")


class ContractConfig(_Model):
    columns: dict[str, ColumnCheck] = Field(default_factory=dict, description="Checks per column.")
    strict: bool = Field(True, description="Columns not listed under `columns` are schema drift.")
    row_count: RowCount = Field(default_factory=RowCount, description="Bounds on the batch size.")
    checks: list[HookRef] = Field(
        default_factory=list, description="Custom checks `module:function(df) -> bool Series` (True = row passes)."
    )
    max_failure_rate: float = Field(0.0, ge=0.0, le=1.0, description="Largest share of failing rows that still passes.")


class FeaturesConfig(_Model):
    hook: HookRef | None = Field(None, description="`module:function(df) -> df` building features; none = identity.")
    mode: Literal["replace_batch", "append"] = Field("replace_batch", description="How batches land in `features`.")


# ----------------------------------------------------------------------------- training & gate
class SplitConfig(_Model):
    method: Literal["time", "random"] = Field("random", description="Time-ordered or seeded random split.")
    column: str | None = Field(None, description="Order column for `method: time` (default: model.time_column).")
    valid: float = Field(0.15, gt=0.0, lt=1.0, description="Share of rows for validation.")
    test: float = Field(0.15, gt=0.0, lt=1.0, description="Share of rows for the held-out test set.")
    seed: int = Field(42, description="Seed of the random split.")

    @model_validator(mode="after")
    def _sizes(self) -> SplitConfig:
        if self.valid + self.test >= 1.0:
            raise ValueError(f"valid + test < 1 (got {self.valid} + {self.test})")
        return self


class ParamSpace(_Model):
    type: Literal["int", "float", "categorical"] = Field(description="Kind of search dimension.")
    low: float | None = Field(None, description="Lower bound (int/float).")
    high: float | None = Field(None, description="Upper bound (int/float).")
    log: bool = Field(False, description="Sample on a log scale.")
    choices: list[Any] | None = Field(None, description="Choices (categorical).")

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpace:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a non-empty `choices` list for a categorical dimension")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError("`low` <= `high` for an int/float dimension")
        return self


class SearchConfig(_Model):
    n_trials: int = Field(20, ge=1, description="Number of optuna trials.")
    timeout: Duration | None = Field(None, description="Stop searching after this long (e.g. 10m).")
    space: dict[str, ParamSpace] = Field(description="Search space per estimator parameter.")


class TrainingConfig(_Model):
    estimator: str | None = Field(
        None,
        description="Built-in estimator class path (scikit-learn or LightGBM); default: HistGradientBoosting "
        "for the task. Leave unset when `hook` is given.",
    )
    hook: HookRef | None = Field(None, description="`module:train(train_df, valid_df, params) -> model` instead.")
    params: dict[str, Any] = Field(default_factory=dict, description="Estimator / hook parameters.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Train/validation/test split.")
    search: SearchConfig | None = Field(None, description="Optional optuna hyperparameter search.")
    metrics: list[str] | None = Field(
        None, description="Metrics to compute (default by task; the first one ranks search trials)."
    )
    calibrate: Literal["isotonic", "sigmoid"] | None = Field(
        None, description="Classification: calibrate the probabilities on the validation rows."
    )
    refit: bool = Field(
        True,
        description="After the gate's evidence is taken on the held-out newest rows, register a model refit on "
        "every labelled row with the same parameters (off: register the evaluated model itself).",
    )
    window: Duration | None = Field(
        None, description="Train on the most recent span of event time only (e.g. 180d; needs model.time_column)."
    )
    window_rows: int | None = Field(None, ge=10, description="Train on the most recent N labelled rows only.")
    recency_half_life: Duration | None = Field(
        None,
        description="Weight training rows by age: a row this much older than the newest counts half "
        "(needs model.time_column and an estimator taking sample_weight).",
    )
    pip_requirements: list[str] = Field(
        default_factory=list, description="Extra pip requirements logged with the model (beyond loopline's own)."
    )


DEFAULT_ESTIMATORS = {
    "regression": "sklearn.ensemble.HistGradientBoostingRegressor",
    "classification": "sklearn.ensemble.HistGradientBoostingClassifier",
}


def estimator_path(cfg: LooplineConfig) -> str | None:
    """The estimator class path training uses (None when a training hook is configured)."""
    if cfg.training.hook:
        return None
    return cfg.training.estimator or DEFAULT_ESTIMATORS[cfg.model.task]


class Threshold(_Model):
    min: float | None = Field(None, description="The metric must be >= this.")
    max: float | None = Field(None, description="The metric must be <= this.")


class Improvement(_Model):
    absolute: float | None = Field(None, ge=0, description="Must beat the champion by at least this much.")
    relative: float | None = Field(None, ge=0, description="Must beat the champion by at least this share.")


class Costs(_Model):
    fp: float = Field(1.0, ge=0, description="Cost of a false positive.")
    fn: float = Field(1.0, ge=0, description="Cost of a false negative.")


class ThresholdSearch(_Model):
    optimise: Literal["f1", "youden", "cost"] = Field(
        description="Choose the binary decision threshold on the validation rows: best F1, Youden's J "
        "(TPR - FPR), or least total cost."
    )
    cost: Costs = Field(default_factory=Costs, description="Costs of errors for `optimise: cost`.")


class GateConfig(_Model):
    thresholds: dict[str, Threshold] = Field(default_factory=dict, description="Absolute bounds per metric.")
    min_improvement: dict[str, Improvement] = Field(
        default_factory=dict, description="Minimum improvement over the champion per metric."
    )
    prediction_range: tuple[float, float] | None = Field(
        None, description="Plausible [min, max] of predictions (classifiers: of the `probability` column)."
    )
    threshold: ThresholdSearch | None = Field(
        None, description="Binary classification: choose model.threshold on the validation rows."
    )
    not_worse: bool = Field(
        True,
        description="With a champion, the candidate must not be worse on the first metric (on the same held-out "
        "newest rows, which neither model trained on); `min_improvement` rules add to this.",
    )
    walk_forward: int | None = Field(
        None,
        ge=2,
        description="Walk-forward evaluation: the held-out newest rows cut into this many consecutive folds, each "
        "predicted by the candidate's parameters fit on every row before it (rolling origin); the gate compares "
        "the pooled predictions with the champion's. Needs training.split.method: time.",
    )

    @model_validator(mode="after")
    def _range(self) -> GateConfig:
        if self.prediction_range and self.prediction_range[0] > self.prediction_range[1]:
            raise ValueError("prediction_range as [min, max] with min <= max")
        return self


# ----------------------------------------------------------------------------- batch & serving
class BatchConfig(_Model):
    input: str = Field("features", description="Table to score.")
    query: str | None = Field(None, description="DuckDB SQL over the tables instead of `input`.")
    engine: Literal["local", "spark"] = Field("local", description="Scoring engine.")
    spark_master: str = Field("local[*]", description="Spark master URL for `engine: spark`.")
    batch_size: int = Field(131072, ge=1, description="Rows per Arrow record batch.")


class LogConfig(_Model):
    enabled: bool = Field(True, description="Log every prediction to `inference_log`.")
    flush_rows: int = Field(1000, ge=1, description="Flush when this many rows are buffered.")
    flush_interval: Duration = Field(timedelta(seconds=2), description="Flush at least this often.")
    max_buffer_rows: int = Field(200_000, ge=1, description="Memory cap; beyond it rows spill to disk.")
    compact_every: int = Field(
        100, ge=0, description="Compact `inference_log` after this many log commits (0 = never)."
    )
    spill_dir: str | None = Field(None, description="Spill folder (default `<state>/spill`).")
    committer_process: bool = Field(
        True,
        description="`loopline serve` commits the log from a separate low-priority process; the workers only "
        "stage their rows (off: one worker commits for all).",
    )
    redact: dict[str, Literal["hash", "drop"]] = Field(default_factory=dict, description="PII columns to hash or drop.")
    salt_env: str = Field("LOOPLINE_REDACT_SALT", description="Environment variable with the hashing salt.")


class AuthConfig(_Model):
    tokens_env: str | None = Field(
        None, description="Environment variable holding `token=role1+role2,...`; unset = no auth."
    )


class ServingConfig(_Model):
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8080, ge=1, le=65535, description="Port.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes.")
    max_body_bytes: int = Field(1_000_000, ge=1, description="Largest request body accepted (else 413).")
    reload_interval: Duration = Field(timedelta(seconds=10), description="How often the champion alias is polled.")
    header_timeout: Duration = Field(
        timedelta(seconds=10),
        description="A client must send a request's headers within this, else the connection is closed.",
    )
    body_timeout: Duration = Field(
        timedelta(seconds=30),
        description="A client must send the whole request body within this after the headers, else 408 and the "
        "connection is closed.",
    )
    compile_trees: bool = Field(
        True,
        description="Predict scikit-learn/LightGBM tree ensembles through Treelite (one C++ call for all trees); "
        "used only when it matches the model's own predictions at load.",
    )
    log: LogConfig = Field(default_factory=LogConfig, description="Prediction log.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Bearer-token auth.")


# ----------------------------------------------------------------------------- monitoring & loop
DriftMethod = Literal["auto", "ks", "chi2", "wasserstein", "jensenshannon", "psi"]


class ColumnMonitor(_Model):
    method: DriftMethod = Field("auto", description="Drift statistic for this column.")
    threshold: float | None = Field(None, ge=0, description="Drift threshold (default per method).")


class PerformanceConfig(_Model):
    metric: str | None = Field(None, description="Metric watched (default: the task's primary metric).")
    max_degradation: float = Field(0.2, ge=0, description="Allowed relative worsening vs gate-time test metric.")


class MonitoringConfig(_Model):
    window: Duration = Field(timedelta(days=7), description="Default current window.")
    source: Literal["inference_log", "batch", "both"] = Field("both", description="Where current inputs come from.")
    columns: dict[str, ColumnMonitor] = Field(default_factory=dict, description="Per-column method and threshold.")
    drift_share: float = Field(0.5, gt=0, le=1, description="Dataset drift when this share of features drifted.")
    small_sample: int = Field(1000, ge=1, description="Below this many rows, KS / chi-squared are used.")
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig, description="Performance check.")
    slices: list[str] = Field(default_factory=list, description="Columns to slice performance by.")
    max_range_violation_rate: float = Field(0.01, ge=0, le=1, description="Largest share out of prediction_range.")
    time: Literal["auto", "event", "wall"] = Field(
        "auto",
        description="Windows on event time (model.time_column: rows count in the window their own time says) or "
        "on wall-clock time (when they were scored or logged); auto = event time when model.time_column is set.",
    )


class RetrainingConfig(_Model):
    triggers: list[Literal["drift", "performance", "range", "schedule", "always"]] = Field(
        default_factory=lambda: ["drift", "performance"],  # type: ignore[arg-type]
        description="What starts a retrain (`always`: every loop turn that has new labelled rows).",
    )
    min_new_labels: int = Field(
        1,
        ge=0,
        description="Retrain only when at least this many labelled rows arrived since the champion was trained.",
    )
    source: str | None = Field(None, description="Source ingested before retraining (default: the first).")
    auto_promote: bool = Field(True, description="Promote a passing candidate automatically.")
    max_gate_failures: int = Field(3, ge=1, description="Failed gates in a row before human review is required.")
    use_feedback_labels: bool = Field(False, description="Use feedback labels as training targets.")


_EVERY = re.compile(r"^\s*(\d+)\s*(mo|w|d|h)\s*$")


def _check_every(value: str | None) -> str | None:
    if value is not None and not _EVERY.match(value):
        raise ValueError("a window length like 1mo, 2w, 7d or 12h")
    return value


class ReplayConfig(_Model):
    source: str | None = Field(None, description="Labelled history replayed window by window (default: the first).")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the source's query.")
    every: Annotated[str | None, AfterValidator(_check_every)] = Field(
        None, description="Window length by model.time_column: `1mo`, `2w`, `7d`, `12h` (or use `rows`)."
    )
    rows: int | None = Field(None, ge=1, description="Window length in rows (source order) instead of `every`.")
    initial: int = Field(1, ge=1, description="Windows the first model is trained on before the replay starts.")
    metric: str | None = Field(None, description="Metric compared per window (default: the first training metric).")
    serve: bool = Field(
        False, description="Send a sample of each window through a real HTTP server (and labels through /feedback)."
    )
    sample: int = Field(24, ge=0, description="Rows per window sent through HTTP when `serve` is on.")
    policies: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named config overrides replayed side by side (`loopline replay --policy NAME`), e.g. "
        "`{refit_off: {training: {refit: false}}}`.",
    )


JobName = Literal["ingest", "train", "batch", "monitor", "loop", "retention"]


def _check_cron(expr: str) -> str:
    if not _cron_ok(expr):
        raise ValueError("a cron expression like '0 3 * * *' (minute hour day month weekday)")
    return expr


CronExpr = Annotated[str, AfterValidator(_check_cron)]


class EnvironmentConfig(_Model):
    storage_root: str | None = Field(None, description="Table root (default `.loopline/<env>/tables`; may be s3://).")
    storage_options: dict[str, str] = Field(default_factory=dict, description="Object-store options for deltalake.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default sqlite in `.loopline/<env>`).")
    registry_uri: str | None = Field(None, description="MLflow registry URI (default: the tracking URI).")
    artifact_root: str | None = Field(None, description="MLflow artifact root (default `.loopline/<env>/artifacts`).")
    registered_model: str | None = Field(None, description="Registered model name (default `<env>.<model>`).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Base sections overlaid in this environment.")


class LooplineConfig(_Model):
    project: str = Field(pattern=_NAME, description="Project name.")
    model: ModelSpec = Field(description="What is predicted from what.")
    sources: dict[str, SourceConfig] = Field(default_factory=dict, description="Named data sources.")
    contract: ContractConfig = Field(default_factory=ContractConfig, description="Data contract (quality gate).")
    features: FeaturesConfig = Field(default_factory=FeaturesConfig, description="Feature building.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Champion/challenger gate.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Batch scoring.")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="Online serving.")
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig, description="Drift and performance.")
    retraining: RetrainingConfig = Field(default_factory=RetrainingConfig, description="Automatic retraining.")
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="`loopline replay`: the loop on history.")
    schedules: dict[JobName, CronExpr] = Field(default_factory=dict, description="Cron expression per job.")
    retention: dict[str, Duration] = Field(default_factory=dict, description="How long rows are kept, per table.")
    environments: dict[str, EnvironmentConfig] = Field(
        default_factory=lambda: {"dev": EnvironmentConfig()}, description="Environments overlaying the base."
    )

    @model_validator(mode="after")
    def _cross(self) -> LooplineConfig:
        if self.training.estimator is not None and self.training.hook is not None:
            raise ValueError("at most one of training.estimator or training.hook")
        if not self.environments:
            raise ValueError("at least one environment under `environments`")
        if self.gate.walk_forward and self.training.split.method != "time":
            raise ValueError("gate.walk_forward needs training.split.method: time (folds follow time)")
        return self


def _cron_ok(expr: str) -> bool:
    from croniter import croniter

    return bool(croniter.is_valid(expr))


# ----------------------------------------------------------------------------- the resolved project
@dataclass(frozen=True)
class Project:
    """A loaded project in one environment: the config plus every resolved location."""

    root: Path
    config_path: Path
    env: str
    config: LooplineConfig
    state_dir: Path
    storage_root: str
    storage_options: dict[str, str]
    tracking_uri: str
    registry_uri: str
    artifact_root: str
    registered_model: str

    def table_uri(self, name: str) -> str:
        return f"{self.storage_root.rstrip('/')}/{name}"

    def resolve_path(self, path: str) -> str:
        """A source path relative to the project root, or a URI / `pkg://package/path` left usable."""
        if path.startswith("pkg://"):
            return _package_file(path)
        if "://" in path:
            return path
        p = Path(os.path.expanduser(path))
        return str(p if p.is_absolute() else self.root / p)


def _package_file(uri: str) -> str:
    from importlib.resources import files

    package, _, rel = uri[len("pkg://") :].partition("/")
    try:
        return str(files(package).joinpath(rel))
    except ModuleNotFoundError:
        raise ConfigError(f"{uri}: package {package!r} is not installed", hint=f"pip install {package}") from None


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def interpolate(value: Any, path: str, file: str, environ: Mapping[str, str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, f"{path}.{k}" if path else str(k), file, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", file, environ) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{file}: {path} uses ${{{name}}}, but the environment variable {name} is not set",
                hint=f"export {name}=... or write ${{{name}:-default}}",
            )

        return _VAR.sub(sub, value)
    return value


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def find_config(start: Path | str | None = None) -> Path:
    """``loopline.yaml`` in ``start`` (a folder or the file itself) or the nearest parent folder."""
    p = Path(start or os.getcwd()).resolve()
    if not p.exists():
        raise ConfigError(f"project folder {p} does not exist", hint="pass --project DIR of an existing project")
    if p.is_file():
        return p
    for d in (p, *p.parents):
        if (d / CONFIG_FILE).is_file():
            return d / CONFIG_FILE
    raise ConfigError(
        f"no {CONFIG_FILE} in {p} or any parent folder",
        hint="run loopline inside a project, pass --project DIR, or create one with `loopline init DIR`",
    )


def read_raw(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = _load_unique(text, path.name)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path.name}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: must be a mapping of sections, got {type(data).__name__}")
    return data


def _load_unique(text: str, file: str) -> Any:
    """``yaml.safe_load`` that refuses a key written twice in one mapping (YAML would keep the last)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicates(node, "", file)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicates(node: yaml.Node, path: str, file: str) -> None:
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicates(item, f"{path}[{i}]", file)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value in node.value:
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
        if key is None or key == "<<":
            continue
        dotted = f"{path}.{key}" if path else key
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                f"{file}: duplicate key {dotted!r} at line {line} (first at line {seen[key]})",
                hint="YAML would silently keep only the last one; keep one of them",
            )
        seen[key] = line
        _refuse_duplicates(value, dotted, file)


def validate(data: dict[str, Any], file: str) -> LooplineConfig:
    """Validate a parsed (interpolated, overlaid) mapping; raise ConfigError listing every problem."""
    try:
        cfg = LooplineConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        raise ConfigError(
            "\n".join(f"{file}: {p}" for p in problems),
            hint="see the configuration reference in README.md",
        ) from None
    problems = cross_check(cfg)
    if problems:
        raise ConfigError(
            "\n".join(f"{file}: {p}" for p in problems), hint="see the configuration reference in README.md"
        )
    return cfg


def cross_check(cfg: LooplineConfig) -> list[str]:
    """Rules spanning sections: classification-only keys, the probability range, metric names per task."""
    from loopline import metrics

    task = cfg.model.task
    problems: list[str] = []
    if task != "classification":
        only = {
            "model.positive_label": cfg.model.positive_label,
            "model.threshold": cfg.model.threshold,
            "training.calibrate": cfg.training.calibrate,
            "gate.threshold": cfg.gate.threshold,
        }
        problems += [
            f"{k} is only for model.task: classification (got {v!r})" for k, v in only.items() if v is not None
        ]
    needs_time = {
        "training.window": cfg.training.window,
        "training.recency_half_life": cfg.training.recency_half_life,
    }
    if cfg.model.time_column is None:
        problems += [f"{k} needs model.time_column (got {v})" for k, v in needs_time.items() if v is not None]
    if cfg.monitoring.time == "event" and cfg.model.time_column is None:
        problems.append("monitoring.time is event, but model.time_column is not set")
    if cfg.model.threshold is not None and cfg.gate.threshold is not None:
        problems.append("model.threshold and gate.threshold both set the decision threshold; keep one")
    rng = cfg.gate.prediction_range
    if task == "classification" and rng is not None and not (0.0 <= rng[0] <= rng[1] <= 1.0):
        problems.append(
            f"gate.prediction_range is the range of the `probability` column for a classifier: [min, max] within "
            f"[0, 1], got {list(rng)}"
        )
    used = [(f"training.metrics[{i}]", m) for i, m in enumerate(cfg.training.metrics or [])]
    used += [(f"gate.thresholds.{m}", m) for m in cfg.gate.thresholds]
    used += [(f"gate.min_improvement.{m}", m) for m in cfg.gate.min_improvement]
    if cfg.monitoring.performance.metric:
        used.append(("monitoring.performance.metric", cfg.monitoring.performance.metric))
    if cfg.replay.metric:
        used.append(("replay.metric", cfg.replay.metric))
    if cfg.replay.source is not None and cfg.replay.source not in cfg.sources:
        problems.append(f"replay.source: {cfg.replay.source!r} is not defined under `sources`")
    known = metrics.known(task)
    for key, name in used:
        if name not in known:
            problems.append(f"{key}: {name!r} is not a {task} metric (valid: {', '.join(known)})")
    return problems


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "(top level)"
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = "" if kind == "missing" or isinstance(value, (dict, list)) else f", got {value!r}"
    if kind == "missing":
        return f"{loc} is required"
    if kind == "extra_forbidden":
        return f"{loc} is not a known key{got}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"{loc} must be a number {op} {bound}{got}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{loc} must be an integer{got}"
    if kind in ("float_parsing", "float_type"):
        return f"{loc} must be a number{got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{loc} must be true or false{got}"
    if kind == "literal_error":
        return f"{loc} must be one of {ctx.get('expected')}{got}"
    if kind == "string_pattern_mismatch":
        what = "a `package.module:function` reference" if ":" in ctx.get("pattern", "") else "a name"
        return f"{loc} must be {what} (pattern {ctx.get('pattern')}){got}"
    if kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return f"{loc} must be {msg}{got}" if loc != "(top level)" else f"config must have {msg}"
    msg = err["msg"].replace("Input should be", "must be").replace("Value error, ", "")
    return f"{loc}: {msg}{got}"


def load_config(
    path: Path, env: str | None = None, environ: dict[str, str] | None = None
) -> tuple[LooplineConfig, str]:
    """Load and validate ``loopline.yaml`` for one environment; return the config and the env name."""
    env_vars: Mapping[str, str] = os.environ if environ is None else environ
    raw = read_raw(path)
    envs = raw.get("environments")
    name = env or (next(iter(envs)) if isinstance(envs, dict) and envs else "dev")
    # Only the selected environment's `${VAR}`s must be set: dev never needs prod's secrets.
    lenient = {**env_vars, **_placeholders(envs, name)}
    data = interpolate({k: v for k, v in raw.items() if k != "environments"}, "", path.name, env_vars)
    if envs is not None:
        data["environments"] = interpolate(envs, "environments", path.name, lenient)
        if isinstance(envs, dict) and isinstance(envs.get(name), dict):
            data["environments"][name] = interpolate(envs[name], f"environments.{name}", path.name, env_vars)
    base = validate(data, path.name)
    if name not in base.environments:
        raise ConfigError(
            f"{path.name}: environment {name!r} is not defined under `environments`",
            hint=f"defined: {', '.join(base.environments)}",
        )
    overrides = base.environments[name].overrides
    if not overrides:
        return base, name
    return validate(deep_merge(data, overrides), f"{path.name} [environment {name}]"), name


def _placeholders(envs: Any, selected: str) -> dict[str, str]:
    """Leave other environments' unset variables as written (they are checked when that env is loaded)."""
    names: set[str] = set()
    if isinstance(envs, dict):
        for env_name, block in envs.items():
            if env_name != selected:
                names.update(m.group(1) for m in _VAR.finditer(yaml.safe_dump(block)))
    return {n: f"${{{n}}}" for n in names}


def private_state() -> None:
    """From now on this process creates folders 0700 and files 0600 (umask 077): a command that loaded a project
    writes its state (MLflow database, artifacts, Delta tables, reports, spill files) for the owner only."""
    os.umask(os.umask(0o077) | 0o077)


def load_project(start: Path | str | None = None, env: str | None = None) -> Project:
    """Find, load and resolve a project for one environment."""
    path = find_config(start)
    cfg, name = load_config(path, env)
    root = path.parent
    e = cfg.environments[name]
    state = root / ".loopline" / name
    tracking = e.tracking_uri or f"sqlite:///{state / 'mlflow.db'}"
    return Project(
        root=root,
        config_path=path,
        env=name,
        config=cfg,
        state_dir=state,
        storage_root=_abs_uri(e.storage_root, root) if e.storage_root else str(state / "tables"),
        storage_options=dict(e.storage_options),
        tracking_uri=tracking,
        registry_uri=e.registry_uri or tracking,
        artifact_root=_abs_uri(e.artifact_root, root) if e.artifact_root else (state / "artifacts").as_uri(),
        registered_model=e.registered_model or f"{name}.{cfg.model.name}",
    )


def _abs_uri(value: str, root: Path) -> str:
    if "://" in value:
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (root / p).resolve())
