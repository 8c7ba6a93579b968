"""Training: features at a pinned Delta version -> split -> fit (built-in estimator or hook, optional
optuna search) -> one MLflow run -> a registered model version -> the champion/challenger gate.

The run records the estimator params, ``valid_<m>``/``test_<m>`` metrics, the features table as a
dataset input (``DeltaDatasetSource`` with the exact version), git commit + dirty flag, a hash of
the resolved config, the loopline version and the duration (tags per docs/contracts.md). The model is
logged with a signature, an input example and explicit pip requirements (MLflow's inference costs
~13 s per model), serialized with skops (trusting only the types of the model just fitted here).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopline import estimators
from loopline.compat import delta_dataset, require
from loopline.display import repr_html
from loopline.errors import ConfigError, HookError, TrainingError
from loopline.evaluation import (
    GateResult,
    compute_metrics,
    gate,
    lower_is_better,
    metric_names,
    small_input_threads,
)
from loopline.jobs import run_tags
from loopline.labels import LabelSpec, spec_for
from loopline.testhooks import crash_point
from loopline.training_data import FEATURES, Prepared, prepare, read_features, recency_weights, split_frame, test_rows

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pandas as pd

    from loopline.config import Project
    from loopline.runtime import Output

__all__ = ["FEATURES", "TrainResult", "prepare", "read_features", "split_frame", "test_rows", "train", "train_job"]


@dataclass
class TrainResult:
    """What one training job produced (rendered the same in the CLI and as JSON)."""

    _repr_html_ = repr_html  # the notebook view: loopline.display

    run_id: str
    model: str
    version: str
    model_uri: str
    features_uri: str
    features_version: int
    n_train: int
    n_valid: int
    n_test: int
    params: dict[str, Any]
    metrics: dict[str, float]
    duration_s: float
    gate: GateResult
    trials: int = 0
    notes: list[str] = field(default_factory=list)
    n_unlabelled: int = 0
    label: dict[str, Any] = field(default_factory=dict)
    refit: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gate"] = self.gate.to_dict()
        return d


# ----------------------------------------------------------------------------- estimators
resolve_estimator = estimators.resolve_estimator
validate_params = estimators.validate_params


class _Trainer:
    """Fits either a built-in estimator class or the user's ``module:train`` hook, then (classifiers)
    calibrates it and applies the decision threshold; knows the label contract of what it fitted."""

    def __init__(self, project: Project) -> None:
        tc = project.config.training
        self.project = project
        self.file = project.config_path.name
        self.cls: type | None = None
        self.hook = None
        self.name: str
        if tc.hook:
            from loopline.hooks import load_hook

            self.hook = load_hook(tc.hook, "training.hook", project.root)
            self.name = tc.hook
        else:
            from loopline.config import estimator_path

            path = estimator_path(project.config)
            assert path is not None
            self.cls = resolve_estimator(path, self.file)
            self.name = path

    def validate(self, params: dict[str, Any], key: str = "training.params") -> None:
        if self.cls is not None:
            validate_params(self.cls, params, self.file, key)

    def fit(self, p: Prepared, params: dict[str, Any], train: pd.DataFrame | None = None) -> Any:
        """Fit on ``train`` (default: the training split); the hook also gets the validation rows."""
        train = p.train if train is None else train
        if self.cls is not None:
            est = estimators.build(self.cls, params, p.categorical, p.input_columns)
            weights = recency_weights(self.project, train)
            if weights is not None and not estimators.takes_sample_weight(est):
                weights = None  # noted once in refit/publish: the estimator takes no sample_weight
            return estimators.fit(est, train[p.input_columns], train[p.target], self.name, weights)
        assert self.hook is not None
        try:
            model = self.hook(train.copy(), p.valid.copy(), dict(params))
        except Exception as exc:
            raise HookError(f"training.hook {self.name} raised {type(exc).__name__}: {exc}") from exc
        if model is None or not hasattr(model, "predict"):
            raise HookError(
                f"training.hook {self.name} returned {type(model).__name__}, not a model with predict()",
                hint="return a fitted model object (scikit-learn-like, with a predict method)",
            )
        return model

    def spec(self, p: Prepared, model: Any = None, threshold: float | None = None) -> LabelSpec:
        """The label contract: the fitted model's classes (else the labelled rows'), positive class, threshold."""
        from loopline.labels import LabelValueError

        m = self.project.config.model
        classes = getattr(model, "classes_", None)
        found = list(classes) if classes is not None else p.classes
        try:
            return spec_for(m.task, p.kind, found, m.positive_label, threshold or m.threshold, m.target)
        except LabelValueError as exc:
            raise ConfigError(f"{self.file}: {exc}", hint=f"the target's classes: {p.classes}") from None

    def finish(self, model: Any, p: Prepared, notes: list[str]) -> tuple[Any, LabelSpec]:
        """Calibrate (``training.calibrate``) and set the decision threshold (``model.threshold`` /
        ``gate.threshold``) of a classifier on the validation rows; regression models pass through."""
        cfg = self.project.config
        spec = self.spec(p, model)
        if not spec.is_classifier:
            return model, spec
        probabilistic = hasattr(model, "predict_proba") and hasattr(model, "classes_")
        X, y = p.valid[p.input_columns], p.valid[p.target]
        if cfg.training.calibrate and probabilistic:
            model = estimators.calibrate(model, X, y, cfg.training.calibrate)
        search = cfg.gate.threshold
        if spec.binary and search is not None and probabilistic:
            import numpy as np

            proba = np.asarray(model.predict_proba(X))[:, spec.positive_index()]
            chosen = estimators.choose_threshold(proba, np.asarray(y) == spec.positive, search)
            if chosen is None:
                notes.append("gate.threshold: the validation rows hold one class only; threshold left at default")
            spec = self.spec(p, model, chosen)
        elif (cfg.training.calibrate or cfg.model.threshold or search) and not probabilistic:
            notes.append("the model has no predict_proba/classes_: calibration and threshold not applied")
            return model, self.spec(p, model, None) if spec.threshold else spec
        if spec.binary and spec.threshold is not None and probabilistic:
            model = estimators.with_threshold(model, spec, X, y)
        return model, spec

    def refit(self, p: Prepared, params: dict[str, Any], spec: LabelSpec, notes: list[str], rows: pd.DataFrame) -> Any:
        """The same parameters fit on ``rows`` (training + validation rows for the evaluated candidate; every
        labelled row for the registered model), with the decision threshold chosen on the validation rows and
        calibration learned on cross-validated predictions."""
        cfg = self.project.config
        X, y = rows[p.input_columns], rows[p.target]
        calibrate = cfg.training.calibrate if spec.is_classifier else None
        if calibrate and self.cls is not None:
            unfitted = estimators.build(self.cls, params, p.categorical, p.input_columns)
            model = estimators.calibrate_refit(unfitted, X, y, calibrate)
        else:
            model = self.fit(p, params, train=rows)
            if calibrate:
                notes.append("training.calibrate: a hook's refit model is not calibrated")
        if spec.binary and spec.threshold is not None and hasattr(model, "predict_proba"):
            model = estimators.with_threshold(model, spec, X, y)
        return model


def _output(model: Any, X: pd.DataFrame, spec: LabelSpec) -> Output:
    """An in-memory model's predictions (and probabilities) on ``X``, as the runtime gives them."""
    import numpy as np

    from loopline.runtime import Output, as_1d, typed_labels

    with small_input_threads(len(X)):
        raw = as_1d(model.predict(X), len(X))
        if not spec.is_classifier:
            return Output(raw.astype(np.float64))
        proba = None
        if hasattr(model, "predict_proba") and len(getattr(model, "classes_", ())) == len(spec.classes):
            try:
                proba = np.asarray(model.predict_proba(X), dtype=np.float64)
            except Exception:
                proba = None
    return Output(typed_labels(raw, spec), proba)


def _evaluate(model: Any, df: pd.DataFrame, p: Prepared, names: list[str], spec: LabelSpec) -> dict[str, float]:
    return compute_metrics(names, df[p.target].to_numpy(), _output(model, df[p.input_columns], spec), spec)


# ----------------------------------------------------------------------------- search
def _search(
    project: Project, trainer: _Trainer, p: Prepared, base: dict[str, Any], names: list[str]
) -> tuple[dict[str, Any], int]:
    """Optuna search on the validation metric; every trial a nested MLflow run. Returns the best params."""
    import math

    import mlflow

    require("optuna", extra="tune")  # missing: MissingDependency names `pip install "loopline[tune]"`
    import optuna

    sc = project.config.training.search
    assert sc is not None
    trainer.validate({k: v for k, v in base.items() if k not in sc.space})
    metric = names[0]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=project.config.training.split.seed)
    study = optuna.create_study(direction="minimize" if lower_is_better(metric) else "maximize", sampler=sampler)

    errors: list[str] = []
    active = mlflow.active_run()
    exp = active.info.experiment_id if active is not None else None

    def objective(trial: optuna.Trial) -> float:
        params = dict(base)
        for k, dim in sc.space.items():
            if dim.type == "int":
                params[k] = trial.suggest_int(k, int(dim.low or 0), int(dim.high or 0), log=dim.log)
            elif dim.type == "float":
                params[k] = trial.suggest_float(k, float(dim.low or 0), float(dim.high or 0), log=dim.log)
            else:
                params[k] = trial.suggest_categorical(k, list(dim.choices or []))
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, experiment_id=exp, tags=run_tags()):
            mlflow.log_params(params)
            try:
                trainer.validate(params, "training.search.space")
                model = trainer.fit(p, params)
                valid = _evaluate(model, p.valid, p, names, trainer.spec(p, model))
                value = valid.get(metric, float("nan"))
                if math.isnan(value):
                    raise TrainingError(f"valid_{metric} is NaN")
            except Exception as exc:
                errors.append(f"trial {trial.number}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                mlflow.set_tag("loopline.trial_error", errors[-1][:5000])
                raise
            mlflow.log_metrics({f"valid_{m}": v for m, v in valid.items() if not math.isnan(v)})
        return value

    timeout = sc.timeout.total_seconds() if sc.timeout else None
    study.optimize(objective, n_trials=sc.n_trials, timeout=timeout, catch=(Exception,))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise TrainingError(
            f"every one of {len(study.trials)} search trials failed: {'; '.join(errors[:3])}",
            hint="check training.search.space bounds against the estimator's parameters",
        )
    return {**base, **study.best_params}, len(study.trials)


# ----------------------------------------------------------------------------- provenance
def git_info(root: Path) -> tuple[str, str]:
    """(commit, dirty) of the project folder; ("unknown", "unknown") outside git or without git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown", "unknown"
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", ".", ":(exclude).loopline"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    dirty = "unknown" if status.returncode != 0 else ("true" if status.stdout.strip() else "false")
    return head.stdout.strip(), dirty


def config_hash(project: Project) -> str:
    data = {"env": project.env, "config": project.config.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


_DISTS: Mapping[str, list[str]] | None = None


def pip_requirements(model: Any, serialization: str, extra: list[str]) -> list[str]:
    """Pinned requirements of the packages the model's classes come from, plus what loading needs."""
    global _DISTS
    from importlib.metadata import packages_distributions

    if _DISTS is None:
        _DISTS = packages_distributions()
    dists = _DISTS
    modules = {"mlflow", "sklearn", "numpy", "pandas", "skops" if serialization == "skops" else "cloudpickle"}
    modules |= {c.__module__.split(".")[0] for c in type(model).__mro__}
    for attr in ("steps", "estimators_"):  # pipelines / ensembles of other libraries
        for part in getattr(model, attr, None) or []:
            obj = part[-1] if isinstance(part, tuple) else part
            modules.add(type(obj).__module__.split(".")[0])
    reqs: dict[str, str] = {}
    for mod in sorted(modules):
        for dist in dists.get(mod, []):
            pinned = _pinned(dist)
            if pinned:
                reqs.setdefault(dist.lower(), pinned)
    for r in extra:
        name = re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower()
        reqs[name] = r
    return sorted(reqs.values())


@functools.lru_cache(maxsize=256)
def _pinned(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{dist}=={version(dist)}"
    except PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- log, register, gate
def _log_model(project: Project, model: Any, X_example: pd.DataFrame, spec: LabelSpec) -> Any:
    import warnings

    import mlflow
    from mlflow.models import infer_signature

    try:
        with small_input_threads(len(X_example)):
            preds = model.predict(X_example)
    except Exception:
        preds = None
    with warnings.catch_warnings():  # the integer-column hint: the server answers 400 on NaN there, by design
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(X_example, preds) if preds is not None else infer_signature(X_example)
    serialization, trusted = "skops", None
    try:
        import skops.io as sio

        trusted = sio.get_untrusted_types(data=sio.dumps(model))
    except Exception:  # objects skops cannot represent: cloudpickle (the model is loopline's own artifact)
        serialization = "cloudpickle"
    reqs = pip_requirements(model, serialization, project.config.training.pip_requirements)
    said = io.StringIO()  # MLflow prints "Successfully registered model ..." lines to stderr: to the debug log
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(said):
            warnings.simplefilter("ignore", UserWarning)  # the integer-column hint: by design, see above
            return mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                input_example=X_example,
                pip_requirements=reqs,
                serialization_format=serialization,
                skops_trusted_types=trusted or None,
                registered_model_name=project.registered_model,
                metadata={"loopline": spec.to_dict()},
            )
    except Exception as exc:
        raise TrainingError(f"logging the model to MLflow failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for line in said.getvalue().splitlines():
            log.debug("mlflow: %s", line)


def publish(
    project: Project,
    model: Any,
    p: Prepared,
    params: dict[str, Any],
    spec: LabelSpec,
    *,
    tuned: Any = None,
    evaluated: Any = None,
    names: list[str] | None = None,
    started: float | None = None,
    notes: list[str] | None = None,
    walked: Output | None = None,
) -> tuple[str, str, dict[str, float], GateResult, list[str]]:
    """Inside the active MLflow run (opened within :func:`loopline.tracking.bound`): metrics, tags, dataset,
    model, registered version, gate.

    ``model`` is what is registered. ``tuned`` (fit on the training rows) gives the ``valid_*`` metrics;
    ``evaluated`` (fit on training + validation rows) gives the ``test_*`` metrics, the gate's evidence: the
    registered refit has seen the test rows. Both default to ``model``. Returns (model_uri, version,
    metrics, gate result, notes)."""
    import math
    import warnings

    import mlflow
    import pandas as pd

    refit = evaluated is not None and evaluated is not model
    evaluated = model if evaluated is None else evaluated
    tuned = evaluated if tuned is None else tuned
    duration = time.perf_counter() - started if started is not None else 0.0  # read + search + fit
    names = names or metric_names(project, spec)
    notes = list(notes or [])
    if p.n_unlabelled:
        notes.append(f"{p.n_unlabelled} row(s) without a label (target null) were left out")
    if p.n_outside_window:
        notes.append(f"{p.n_outside_window} labelled row(s) older than the training window were left out")
    metrics: dict[str, float] = {}
    try:
        metrics |= {f"valid_{m}": v for m, v in _evaluate(tuned, p.valid, p, names, spec).items()}
    except Exception as exc:
        notes.append(f"valid metrics not computed: the model raised {type(exc).__name__}: {exc}")
    fitted_on = p.all_rows() if refit else pd.concat([p.train, p.valid], ignore_index=True)
    mlflow.set_tags(_run_tags(project, p, spec, refit, fitted_on))
    if params:
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in params.items()})
    with warnings.catch_warnings():  # MLflow's integer-column hint is about model signatures, not datasets
        warnings.simplefilter("ignore", UserWarning)
        mlflow.log_input(
            delta_dataset(p.all_rows(), p.features_uri, p.features_version, p.target, FEATURES), context="training"
        )
    info = _log_model(project, model, p.test[p.input_columns].head(5), spec)
    version = str(info.registered_model_version)
    crash_point("registered")
    candidate = walked  # walk-forward predictions of the test rows (gate.walk_forward), else one evaluated fit
    if refit and candidate is None:
        try:
            candidate = _output(evaluated, p.test[p.input_columns], spec)
        except Exception as exc:
            notes.append(f"the evaluated candidate raised on the test rows: {type(exc).__name__}: {exc}")
    result = gate(project, version, p.test, metrics=names, candidate=candidate)
    if result.candidate_metrics:  # the evaluated candidate on the held-out test rows: the test metrics
        metrics |= {f"test_{m}": v for m, v in result.candidate_metrics.items()}
    if refit:
        _log_evaluation(params, metrics, fitted_rows=len(p.train) + len(p.valid))
    if notes:
        mlflow.set_tag("loopline.train_notes", json.dumps(notes)[:5000])
    mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)} | {"training_duration_s": duration})
    return f"models:/{project.registered_model}/{version}", version, metrics, result, notes


def _run_tags(project: Project, p: Prepared, spec: LabelSpec, refit: bool, fitted_on: pd.DataFrame) -> dict[str, str]:
    import loopline
    from loopline.config import estimator_path

    commit, dirty = git_info(project.root)
    tc = project.config.training
    until = p.trained_until(fitted_on)
    return {
        "loopline.features_uri": p.features_uri,
        "loopline.features_version": str(p.features_version),
        "loopline.git_commit": commit,
        "loopline.git_dirty": dirty,
        "loopline.config_hash": config_hash(project),
        "loopline.version": loopline.__version__,
        "loopline.env": project.env,
        "loopline.split": tc.split.model_dump_json(),
        "loopline.trainer": tc.hook or estimator_path(project.config) or "",
        "loopline.label": spec.to_json()[:5000],
        "loopline.unlabelled_rows": str(p.n_unlabelled),
        "loopline.refit": "true" if refit else "false",
        "loopline.trained_rows": str(len(fitted_on)),
        **({"loopline.trained_until": until.isoformat()} if until is not None else {}),
        **({"loopline.categorical_inputs": json.dumps(p.categorical)} if p.categorical else {}),
    }


def _log_evaluation(params: dict[str, Any], metrics: dict[str, float], fitted_rows: int) -> None:
    """The evaluated candidate (trained without the validation and test rows) as a nested run, linked both ways."""
    import math

    import mlflow

    parent = mlflow.active_run()
    assert parent is not None
    exp = parent.info.experiment_id
    with mlflow.start_run(run_name="evaluated-candidate", nested=True, experiment_id=exp, tags=run_tags()) as ev:
        mlflow.set_tags({"loopline.refit_run_id": parent.info.run_id, "loopline.trained_rows": str(fitted_rows)})
        if params:
            mlflow.log_params({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in params.items()})
        mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)})
    mlflow.set_tag("loopline.evaluation_run_id", ev.info.run_id)


def champion_cutoff(project: Project) -> datetime | None:
    """The newest event time the current champion was trained on (its run's ``loopline.trained_until``)."""
    from loopline import tracking

    mv = tracking.alias_version(project, tracking.CHAMPION)
    if mv is None or not mv.run_id:
        return None
    try:
        tag = tracking.client(project).get_run(mv.run_id).data.tags.get("loopline.trained_until")
    except Exception:
        return None
    try:
        return datetime.fromisoformat(tag) if tag else None
    except ValueError:
        return None


def train(
    project: Project, data_version: int | None = None, params_override: dict[str, Any] | None = None
) -> TrainResult:
    """Train on the features table at ``data_version`` (latest by default), register, and gate.

    The candidate is fit on the training rows and judged on the newest held-out rows (rows after the
    champion's training cutoff when it is known); with ``training.refit`` the registered model is the
    same parameters fit on every labelled row."""
    import mlflow
    import pandas as pd

    from loopline import tracking

    started = time.perf_counter()
    tc = project.config.training
    params = {**tc.params, **(params_override or {})}
    trainer = _Trainer(project)
    if tc.search is None:
        trainer.validate(params)
    p = prepare(project, data_version, unseen_after=champion_cutoff(project))
    names = metric_names(project, trainer.spec(p))
    exp = tracking.experiment_id(project)
    notes: list[str] = list(p.notes)
    if tc.recency_half_life is not None and trainer.cls is not None:
        probe = estimators.build(trainer.cls, params, p.categorical, p.input_columns)
        if not estimators.takes_sample_weight(probe):
            notes.append(f"training.recency_half_life: {trainer.name}.fit takes no sample_weight; rows not weighted")
    name = f"train-{project.env}-data-v{p.features_version}"
    # the run, its nested runs and the logged model exist only in MLflow's global ("fluent") form: the caller's
    # URIs and active run are set aside for the block and restored after (tracking.bound)
    with tracking.bound(project), mlflow.start_run(experiment_id=exp, run_name=name, tags=run_tags()) as run:
        trials = 0
        if tc.search is not None:
            params, trials = _search(project, trainer, p, params, names)
            mlflow.set_tag("loopline.search_trials", str(trials))
        # tuned on the training rows (threshold, calibration and valid_* metrics on the validation rows) ...
        tuned, spec = trainer.finish(trainer.fit(p, params), p, notes)
        # ... judged after a fit on training + validation rows (the newest rows it can see) on the test rows ...
        evaluated = trainer.refit(p, params, spec, notes, pd.concat([p.train, p.valid], ignore_index=True))
        walked = None
        if project.config.gate.walk_forward:
            from loopline.walkforward import walk_forward

            walked = walk_forward(trainer, p, params, spec, notes, project.config.gate.walk_forward)
            mlflow.set_tag("loopline.walk_forward_folds", str(project.config.gate.walk_forward if walked else 0))
        # ... and registered as a fit on every labelled row
        model = trainer.refit(p, params, spec, notes, p.all_rows()) if tc.refit else evaluated
        uri, version, metrics, result, notes = publish(
            project, model, p, params, spec, tuned=tuned, evaluated=evaluated, names=names, started=started,
            notes=notes, walked=walked,
        )  # fmt: skip
        run_id = run.info.run_id
    return TrainResult(
        run_id=run_id,
        model=project.registered_model,
        version=version,
        model_uri=uri,
        features_uri=p.features_uri,
        features_version=p.features_version,
        n_train=len(p.train),
        n_valid=len(p.valid),
        n_test=len(p.test),
        params=params,
        metrics=metrics,
        duration_s=round(time.perf_counter() - started, 3),
        gate=result,
        trials=trials,
        notes=notes,
        n_unlabelled=p.n_unlabelled,
        label=spec.to_dict(),
        refit=bool(tc.refit),
    )


def train_job(project: Project, data_version: int | None = None) -> TrainResult:
    """`loopline run train` / the scheduled `train` job: train, register and gate (a refusal is a result)."""
    return train(project, data_version=data_version)
