"""Validation: the data contract (``contract:``) checked with pandera on one batch of ``raw``.

Rows failing a check go to ``quarantine`` with their failing checks; the batch stops
(:class:`~loopline.errors.ValidationFailed`, exit code 3) when the failing share exceeds
``max_failure_rate`` or the schema drifted (missing / unexpected column, uncoercible type).
The :class:`ValidationReport` is one structured object, printed by the CLI and saved as JSON.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loopline.errors import HookError, TableError, ValidationFailed
from loopline.hooks import load_hook

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import RenderableType

    from loopline.coerce import TypeTally
    from loopline.config import ColumnCheck, ContractConfig
    from loopline.tables import DeltaStore
    from loopline.validate_stream import StagedRows

SYSTEM_COLUMNS = ("_batch_id", "_ingested_at", "_source", "_type_errors")
CHUNK_ROWS = 100_000  # rows validated at once: memory stays bounded whatever the batch size
MAX_EXAMPLES = 5
_TS = pa.timestamp("us", tz="UTC")


@dataclass
class CheckFailure:
    """One check that failed: on a column (or the whole row / batch), how often, with examples."""

    check: str
    column: str | None
    failing_count: int
    examples: list[Any] = field(default_factory=list)


@dataclass
class DriftItem:
    """A schema change: ``missing_column``, ``unexpected_column`` or ``type`` (cannot be coerced)."""

    kind: str
    column: str
    detail: str
    examples: list[Any] = field(default_factory=list)


@dataclass
class ValidationReport:
    """The outcome of checking one batch against the contract."""

    batch_id: str
    rows: int
    failing_rows: int
    failing_share: float
    max_failure_rate: float
    passed: bool
    checks: list[CheckFailure] = field(default_factory=list)
    drift: list[DriftItem] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    validated_at: str = ""
    report_path: str | None = None
    quarantine_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"batch {self.batch_id}: {verdict} - {self.failing_rows}/{self.rows} rows failing "
            f"({self.failing_share:.2%}, allowed {self.max_failure_rate:.2%}), "
            + (f"{len(self.drift)} schema drift item(s)" if self.drift else "no schema drift")
        )

    def renderable(self) -> RenderableType:
        """The report as rich tables (the same fields as the JSON)."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        parts: list[RenderableType] = [Text(self.summary(), style="green" if self.passed else "bold red")]
        parts += [Text(f"- {r}", style="red") for r in self.reasons]
        if self.checks:
            t = Table(title="failed checks", title_justify="left")
            for col in ("check", "column", "failing", "examples"):
                t.add_column(col, justify="right" if col == "failing" else "left")
            for c in self.checks:
                t.add_row(c.check, c.column or "-", str(c.failing_count), ", ".join(map(repr, c.examples)))
            parts.append(t)
        if self.drift:
            d = Table(title="schema drift", title_justify="left")
            for col in ("kind", "column", "detail", "examples"):
                d.add_column(col)
            for item in self.drift:
                d.add_row(item.kind, item.column, item.detail, ", ".join(map(repr, item.examples)))
            parts.append(d)
        if self.report_path:
            parts.append(Text(f"report: {self.report_path}", style="dim"))
        return Group(*parts)


@dataclass
class ValidationOutcome:
    """A passed report plus the validated rows that continue to features (staged on disk)."""

    report: ValidationReport
    rows: StagedRows

    @property
    def valid(self) -> pd.DataFrame:
        """The valid rows as one DataFrame (loads them all; :meth:`StagedRows.reader` streams)."""
        return self.rows.frame()


# ----------------------------------------------------------------------------- schema
def _pandera() -> Any:
    """``pandera.pandas``, imported quietly (it imports pyspark.pandas when installed, which warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import pandera.pandas

    return pandera.pandas


def _target_dtype(kind: str | None, series: pd.Series) -> Any:
    """The dtype a column is coerced to; a column that already fits keeps its own dtype."""
    from pandas.api import types as t

    if kind is None:
        return None
    fits = {
        "int": t.is_integer_dtype(series) and not t.is_bool_dtype(series),
        "float": t.is_float_dtype(series),
        "str": t.is_string_dtype(series) and not t.is_object_dtype(series),
        "bool": t.is_bool_dtype(series),
        "datetime": t.is_datetime64_any_dtype(series),
        "date": False,
    }[kind]
    if fits:
        return series.dtype
    return {"int": "Int64", "float": "float64", "str": "str", "bool": "boolean", "datetime": "datetime64[us]"}.get(
        kind, "date"
    )


def _column_checks(name: str, spec: ColumnCheck) -> tuple[list[Any], list[str]]:
    pa_ = _pandera()

    checks: list[Any] = []
    labels: list[str] = []
    if spec.min is not None:
        checks.append(pa_.Check.ge(spec.min))
        labels.append(f"min {spec.min:g}")
    if spec.max is not None:
        checks.append(pa_.Check.le(spec.max))
        labels.append(f"max {spec.max:g}")
    if spec.allowed is not None:
        checks.append(pa_.Check.isin(spec.allowed))
        labels.append("allowed")
    if spec.regex is not None:
        pattern = re.compile(spec.regex)
        checks.append(pa_.Check(lambda s, p=pattern: s.astype(str).str.fullmatch(p), name="regex"))
        labels.append("regex")
    return checks, labels


def _custom_check(ref: str, root: Path, errors: list[str]) -> Any:
    import pandas as pd

    pa_ = _pandera()

    fn = load_hook(ref, "contract.checks", root)

    def run(df: pd.DataFrame) -> pd.Series:
        try:
            out = fn(df)
        except Exception as exc:
            errors.append(f"contract.checks: {ref} raised {type(exc).__name__}: {exc}")
            return pd.Series(True, index=df.index)
        if not isinstance(out, pd.Series) or len(out) != len(df) or not pd.api.types.is_bool_dtype(out):
            errors.append(f"contract.checks: {ref} must return a boolean Series with one value per row")
            return pd.Series(True, index=df.index)
        return out.fillna(False).astype(bool)

    return pa_.Check(run, name=ref)


def build_schema(contract: ContractConfig, df: pd.DataFrame, root: Path) -> tuple[Any, dict[Any, str], list[str]]:
    """A pandera schema for ``df`` from the contract, check labels by (column, number), hook errors."""
    pa_ = _pandera()

    columns: dict[str, Any] = {}
    labels: dict[Any, str] = {}
    for name, spec in contract.columns.items():
        checks, names = _column_checks(name, spec)
        labels.update({(name, i): label for i, label in enumerate(names)})
        dtype = _target_dtype(spec.type, df[name]) if name in df.columns else None
        if dtype is None and spec.type is not None:
            dtype = {"int": "Int64", "float": "float64", "str": "str", "bool": "boolean"}.get(spec.type)
        columns[name] = pa_.Column(
            dtype, checks=checks, nullable=spec.nullable, unique=spec.unique, coerce=dtype is not None
        )
    errors: list[str] = []
    frame_checks: list[Any] = []
    rc = contract.row_count
    if rc.min is not None or rc.max is not None:
        lo, hi = rc.min or 0, rc.max if rc.max is not None else math.inf
        frame_checks.append(pa_.Check(lambda d: lo <= len(d) <= hi, name="row_count"))
        labels[(None, len(frame_checks) - 1)] = f"row_count [{lo}, {hi}]"
    for ref in contract.checks:
        frame_checks.append(_custom_check(ref, root, errors))
        labels[(None, len(frame_checks) - 1)] = ref
    schema = pa_.DataFrameSchema(columns, checks=frame_checks, strict=contract.strict)
    return schema, labels, errors


# ----------------------------------------------------------------------------- checking a frame
def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            value = str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return None if str(value) in ("<NA>", "NaT", "nan") else str(value)


def check_frame(
    df: pd.DataFrame, contract: ContractConfig, batch_id: str, root: Path
) -> tuple[ValidationReport, pd.DataFrame, dict[int, list[str]]]:
    """Check ``df``; return the report, the valid (coerced) rows and failing checks by row label."""
    _pandera()
    from pandera.errors import SchemaErrors

    schema, labels, hook_errors = build_schema(contract, df, root)
    report = ValidationReport(
        batch_id, len(df), 0, 0.0, contract.max_failure_rate, True, validated_at=datetime.now(UTC).isoformat()
    )
    try:
        with warnings.catch_warnings():  # pandera's first validation imports pyspark.pandas, which warns
            warnings.simplefilter("ignore", FutureWarning)
            valid = schema.validate(df, lazy=True)
        cases = None
    except SchemaErrors as exc:
        valid, cases = None, exc.failure_cases
    if hook_errors:
        raise HookError(hook_errors[0], hint="a custom check is `module:function(df) -> bool Series` (True = ok)")
    by_row: dict[int, list[str]] = defaultdict(list)
    if cases is not None:
        _classify(cases, labels, report, by_row)
    conclude(report, len(by_row))
    if valid is None:
        keep = df.drop(index=list(by_row))
        targets = {n: c.dtype.type for n, c in schema.columns.items() if n in keep.columns and c.coerce}
        valid = keep if report.drift else keep.astype(targets)
    return report, valid, dict(by_row)


def conclude(report: ValidationReport, failing_rows: int) -> ValidationReport:
    """Set the failing share, the reasons the batch stops and the verdict."""
    report.failing_rows = failing_rows
    report.failing_share = failing_rows / report.rows if report.rows else 0.0
    if report.drift:
        report.reasons.append("schema drift: " + ", ".join(f"{d.kind} {d.column}" for d in report.drift))
    for c in report.checks:
        if c.check.startswith("row_count"):
            report.reasons.append(f"the batch has {report.rows} rows, outside {c.check}")
    if report.failing_share > report.max_failure_rate:
        report.reasons.append(
            f"{report.failing_share:.2%} of rows failed, more than max_failure_rate {report.max_failure_rate:.2%}"
        )
    report.passed = not report.reasons
    return report


def _classify(cases: pd.DataFrame, labels: dict[Any, str], report: ValidationReport, by_row: dict) -> None:
    drift_cols: set[tuple[str, str]] = set()
    groups: dict[tuple[str, str | None], list[Any]] = defaultdict(list)
    for rec in cases.to_dict("records"):
        check, column, index = str(rec["check"]), rec["column"], rec["index"]
        column = None if column is None or (isinstance(column, float) and math.isnan(column)) else str(column)
        has_index = index is not None and not (isinstance(index, float) and math.isnan(index))
        if check == "column_in_schema":
            report.drift.append(DriftItem("unexpected_column", str(rec["failure_case"]), "not in the contract"))
        elif check == "column_in_dataframe":
            report.drift.append(DriftItem("missing_column", str(rec["failure_case"]), "in the contract, not the batch"))
        elif check.startswith(("coerce_dtype", "dtype(")):
            if column is not None:
                drift_cols.add((column, check))
                groups[("__type__" + check, column)].append(rec["failure_case"])
        else:
            if rec["schema_context"] == "DataFrameSchema":
                label = labels.get((None, _num(rec["check_number"])), check)
                column = None
            else:
                label = _label(check, column, rec["check_number"], labels)
            groups[(label, column)].append(rec["failure_case"] if column else index)
            if has_index:
                entry = f"{column}:{label}" if column else f"row:{label}"
                if entry not in by_row[int(index)]:
                    by_row[int(index)].append(entry)
    coerced = {c for c, chk in drift_cols if chk.startswith("coerce_dtype")}
    for (label, column), values in groups.items():
        if label.startswith("__type__"):
            check = label[len("__type__") :]
            if check.startswith("dtype(") and column in coerced:
                continue
            target = check[check.index("(") + 1 : -1].strip("'\"")
            examples = _examples(values)
            report.drift.append(DriftItem("type", str(column), f"cannot be coerced to {target}", examples))
            continue
        count = len(set(values)) if column is None else len(values)
        if label.startswith("row_count"):
            count = report.rows
        report.checks.append(CheckFailure(label, column, count, _examples(values)))


def _examples(values: list[Any]) -> list[Any]:
    """Up to MAX_EXAMPLES distinct values, in order of appearance."""
    out: list[Any] = []
    for v in values:
        j = _jsonable(v)
        if j not in out:
            out.append(j)
        if len(out) == MAX_EXAMPLES:
            break
    return out


def _num(value: Any) -> int | None:
    try:
        return None if value is None or math.isnan(float(value)) else int(value)
    except (TypeError, ValueError):
        return None


def _label(check: str, column: str | None, number: Any, labels: dict[Any, str]) -> str:
    if check == "not_nullable":
        return "not_null"
    if check == "field_uniqueness":
        return "unique"
    n = _num(number)
    return labels.get((column, n), check) if n is not None else check


# ----------------------------------------------------------------------------- the stage
def missing_batch(store: DeltaStore, batch_id: str) -> None:
    import pyarrow.compute as pc

    ids = pc.unique(store.read("raw", columns=["_batch_id"]).column("_batch_id")).to_pylist()[-5:]
    raise TableError(
        f"batch {batch_id!r} is not in table 'raw'",
        hint=f"ingest it first (loopline ingest SOURCE --batch-id ...); recent batches: {ids}",
    )


def validate_batch(
    contract: ContractConfig, store: DeltaStore, batch_id: str, *, root: Path, reports_dir: Path
) -> ValidationOutcome:
    """Validate one ``raw`` batch in chunks: quarantine failing rows, save the JSON report, stop or pass
    the rest (staged for features)."""
    from loopline.validate_stream import validate_chunks

    report, failing, valid = validate_chunks(contract, store, batch_id, root, reports_dir.parent / "staging")
    if not report.drift:
        report.quarantine_version = _quarantine(store, failing, batch_id)
    finish(report, reports_dir)
    return ValidationOutcome(report, valid)


def finish(report: ValidationReport, reports_dir: Path, hint: str | None = None) -> None:
    """Save the report as JSON; raise ValidationFailed (exit 3) when the batch stops."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / f"validation-{re.sub(r'[^A-Za-z0-9_.=-]', '_', report.batch_id)}.json"
    report.report_path = str(path)
    path.write_text(report.to_json())
    if not report.passed:
        raise ValidationFailed(
            f"batch {report.batch_id!r} failed the data contract: " + "; ".join(report.reasons),
            hint=(hint or "nothing reached features; ")
            + (
                "update `contract:` or fix the source"
                if report.drift or hint
                else "failing rows are in table 'quarantine'"
            )
            + f"; report: {path}",
            report=report,
        )


def precheck_batch(
    contract: ContractConfig, batch_id: str, schema: pa.Schema, rows: int, tally: TypeTally, reports_dir: Path
) -> None:
    """Before ``raw`` is written: the row count, missing / unexpected columns and columns whose every value
    is of another type stop the batch (report saved, ValidationFailed), so nothing is committed."""
    from loopline.coerce import ERRORS, TYPE_NAMES

    report = ValidationReport(
        batch_id, rows, 0, 0.0, contract.max_failure_rate, True, validated_at=datetime.now(UTC).isoformat()
    )
    names = [n for n in schema.names if n not in SYSTEM_COLUMNS and n != ERRORS]
    for name in contract.columns:
        if name not in names:
            report.drift.append(DriftItem("missing_column", name, "in the contract, not the batch"))
    if contract.strict:
        for name in names:
            if name not in contract.columns:
                report.drift.append(DriftItem("unexpected_column", name, "not in the contract"))
    for name in tally.all_bad():
        kind = contract.columns[name].type or ""
        detail = f"cannot be coerced to {TYPE_NAMES.get(kind, kind)}"
        report.drift.append(DriftItem("type", name, detail, tally.examples.get(name, [])))
    rc = contract.row_count
    lo, hi = rc.min or 0, rc.max if rc.max is not None else math.inf
    if not lo <= rows <= hi:
        report.checks.append(CheckFailure(f"row_count [{lo}, {hi}]", None, rows))
    conclude(report, 0)
    if not report.passed:
        finish(report, reports_dir, hint="checked before ingest: nothing was written to raw; ")


def _quarantine(store: DeltaStore, failing: StagedRows, batch_id: str) -> int | None:
    """Replace the batch's rows in ``quarantine`` (clearing them when the batch is now clean)."""
    import pyarrow.dataset as ds

    reader = failing.reader()
    if reader is None:
        if not store.exists("quarantine"):
            return None
        stale = store.scan("quarantine", columns=["_batch_id"], filter=ds.field("_batch_id") == batch_id)
        if stale.read_all().num_rows == 0:
            return None
        empty = store.schema("quarantine").empty_table()
        return store.replace_batch("quarantine", empty, batch_id)
    return store.replace_batch("quarantine", reader, batch_id)
