"""Validation with pandera: quarantine contents, batch stopped, schema drift, custom checks, CLI exit 3."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from loopline.config import ContractConfig, load_project
from loopline.errors import HookError, TableError, ValidationFailed
from loopline.ingest import ingest, reports_dir, run_pipeline
from loopline.tables import DeltaStore
from loopline.validate import check_frame, validate_batch

CONTRACT = """\
contract:
  max_failure_rate: {rate}
  row_count: {{min: 1, max: 1000}}
  columns:
    id: {{type: int, nullable: false, unique: true}}
    x: {{type: float, min: 0, max: 100}}
    code: {{type: str, allowed: [a, b, c], regex: "[a-z]"}}
    when: {{type: datetime, nullable: false}}
"""


def make_project(root: Path, lines: list[str], rate: float = 0.1, checks: str = "") -> Path:
    """A project whose csv source `rows` holds ``lines`` (header first)."""
    root.mkdir(parents=True, exist_ok=True)
    config = textwrap.dedent(
        """\
        project: demo
        model: {name: demo, target: x, keys: [id]}
        sources:
          rows: {kind: csv, path: rows.csv}
        environments: {dev: {}}
        """
    )
    (root / "loopline.yaml").write_text(config + CONTRACT.format(rate=rate) + checks)
    (root / "rows.csv").write_text("\n".join(lines) + "\n")
    return root


def good_rows(n: int = 20) -> list[str]:
    return ["id,x,code,when"] + [f"{i},{i * 1.5},{'abc'[i % 3]},2024-01-01 {i % 24:02d}:00:00" for i in range(n)]


def run(root: Path, batch: str = "b1"):  # type: ignore[no-untyped-def]
    project = load_project(root)
    store = DeltaStore(project.storage_root)
    ingest(project, "rows", store=store, batch_id=batch)
    return project, store


def test_a_clean_batch_passes_with_coerced_rows(tmp_path: Path) -> None:
    project, store = run(make_project(tmp_path, good_rows()))
    outcome = validate_batch(project.config.contract, store, "b1", root=project.root, reports_dir=reports_dir(project))
    assert outcome.report.passed and outcome.report.failing_rows == 0
    assert len(outcome.valid) == 20
    assert str(outcome.valid["x"].dtype) == "float64"
    assert not store.exists("quarantine")
    saved = json.loads((project.state_dir / "reports" / "validation-b1.json").read_text())
    assert saved["passed"] is True and saved["rows"] == 20


def test_failing_rows_are_quarantined_with_their_checks(tmp_path: Path) -> None:
    lines = good_rows()
    lines[4] = "2,150.0,z,2024-01-01 00:00:00"  # id 2 duplicated, x > max, code not allowed
    lines[6] = "5,1.0,,2024-01-01 00:00:00"  # code null is allowed (nullable by default)
    project, store = run(make_project(tmp_path, lines, rate=0.2))
    outcome = validate_batch(project.config.contract, store, "b1", root=project.root, reports_dir=reports_dir(project))
    report = outcome.report
    assert report.passed
    assert report.failing_rows == 2  # both rows with id 2
    assert report.failing_share == pytest.approx(0.1)
    by_check = {(c.check, c.column): c for c in report.checks}
    assert by_check[("unique", "id")].failing_count == 2
    assert by_check[("max 100", "x")].examples == [150.0]
    assert by_check[("allowed", "code")].examples == ["z"]
    quarantine = store.read("quarantine").to_pylist()
    assert sorted(r["id"] for r in quarantine) == [2, 2]
    bad = next(r for r in quarantine if r["x"] == 150.0)
    assert bad["_failed_checks"] == "id:unique;x:max 100;code:allowed"
    assert bad["_batch_id"] == "b1" and bad["_quarantined_at"] is not None
    assert sorted(outcome.valid["id"]) == [i for i in range(20) if i not in (2, 3)]  # row 3 became the bad id 2
    # fixed upstream and re-validated: the batch's quarantine rows are cleared
    (project.root / "rows.csv").write_text("\n".join(good_rows()) + "\n")
    ingest(project, "rows", store=store, batch_id="b1")
    validate_batch(project.config.contract, store, "b1", root=project.root, reports_dir=reports_dir(project))
    assert store.read("quarantine").num_rows == 0


def test_a_batch_above_max_failure_rate_stops_before_features(tmp_path: Path) -> None:
    lines = good_rows()
    for i in (1, 2, 3):
        lines[i] = f"{i - 1},-5.0,a,2024-01-01 00:00:00"
    project = load_project(make_project(tmp_path, lines, rate=0.1))
    with pytest.raises(ValidationFailed, match=r"batch 'b1' failed the data contract: 15.00% of rows failed") as err:
        run_pipeline(project, "rows", batch_id="b1")
    report = err.value.report
    assert report is not None and not report.passed
    assert [(c.check, c.column, c.failing_count) for c in report.checks] == [("min 0", "x", 3)]
    store = DeltaStore(project.storage_root)
    assert store.read("quarantine").num_rows == 3
    assert not store.exists("features")
    saved = json.loads(Path(report.report_path).read_text())
    assert saved["checks"][0]["examples"] == [-5.0] and saved["passed"] is False


@pytest.mark.parametrize(
    ("header", "row", "match", "drift"),
    [
        ("id,x,code", "{i},1.0,a", r"schema drift: missing_column when", ("missing_column", "when")),
        ("id,x,code,when,extra", "{i},1.0,a,2024-01-01,7", r"unexpected_column extra", ("unexpected_column", "extra")),
        ("id,x,code,when", "{i},oops,a,2024-01-01", r"schema drift: type x", ("type", "x")),
    ],
)
def test_schema_drift_stops_the_batch(tmp_path: Path, header: str, row: str, match: str, drift: tuple) -> None:
    lines = [header] + [row.format(i=i) for i in range(10)]
    project, store = run(make_project(tmp_path, lines, rate=1.0))
    with pytest.raises(ValidationFailed, match=match) as err:
        validate_batch(project.config.contract, store, "b1", root=project.root, reports_dir=reports_dir(project))
    assert [(d.kind, d.column) for d in err.value.report.drift] == [drift]  # type: ignore[attr-defined]
    assert "update `contract:` or fix the source" in str(err.value)


def test_uncoercible_type_lists_the_values(tmp_path: Path) -> None:
    # one value of another type is a bad row (quarantined); a whole column of them is schema drift
    lines = ["id,x,code,when"] + [f"{i},{'bad' if i == 4 else i},a,2024-01-01" for i in range(10)]
    project, store = run(make_project(tmp_path, lines, rate=1.0))
    outcome = validate_batch(project.config.contract, store, "b1", root=project.root, reports_dir=reports_dir(project))
    (check,) = outcome.report.checks
    assert (check.check, check.column, check.examples) == ("type float", "x", ["bad"])
    assert store.read("quarantine").column("_failed_checks").to_pylist() == ["x:type float"]
    lines = ["id,x,code,when"] + [f"{i},bad{i % 2},a,2024-01-01" for i in range(10)]
    project, store = run(make_project(tmp_path, lines, rate=1.0), batch="b2")
    with pytest.raises(ValidationFailed) as err:
        validate_batch(project.config.contract, store, "b2", root=project.root, reports_dir=reports_dir(project))
    (item,) = err.value.report.drift  # type: ignore[attr-defined]
    assert item.detail == "cannot be coerced to float64" and item.examples == ["bad0", "bad1"]


def _checks_module(root: Path, body: str) -> str:
    name = f"checks_{uuid.uuid4().hex[:8]}"
    (root / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def test_custom_check_flags_rows(tmp_path: Path) -> None:
    module = _checks_module(tmp_path, "def even(df):\n    return df['id'] % 2 == 0\n")
    project, store = run(make_project(tmp_path, good_rows(10), rate=0.5, checks=f"  checks: ['{module}:even']\n"))
    outcome = validate_batch(project.config.contract, store, "b1", root=project.root, reports_dir=reports_dir(project))
    (check,) = outcome.report.checks
    assert (check.check, check.column, check.failing_count) == (f"{module}:even", None, 5)
    assert check.examples == [1, 3, 5, 7, 9]
    rows = store.read("quarantine").to_pylist()
    assert {r["_failed_checks"] for r in rows} == {f"row:{module}:even"}
    assert sorted(outcome.valid["id"]) == [0, 2, 4, 6, 8]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("def check(df):\n    raise KeyError('nope')\n", r"contract.checks: .*:check raised KeyError: 'nope'"),
        ("def check(df):\n    return 3\n", r"contract.checks: .*:check must return a boolean Series"),
    ],
)
def test_broken_custom_checks_raise_hook_errors(tmp_path: Path, body: str, match: str) -> None:
    module = _checks_module(tmp_path, body)
    project, store = run(make_project(tmp_path, good_rows(5), checks=f"  checks: ['{module}:check']\n"))
    with pytest.raises(HookError, match=match):
        validate_batch(project.config.contract, store, "b1", root=project.root, reports_dir=reports_dir(project))


def test_row_count_and_nulls_in_a_frame(tmp_path: Path) -> None:
    import pandas as pd

    contract = ContractConfig.model_validate(
        {"row_count": {"min": 5}, "columns": {"a": {"type": "int", "nullable": False}}, "max_failure_rate": 0.5}
    )
    report, valid, by_row = check_frame(pd.DataFrame({"a": [1.0, None, 3.0]}), contract, "b", tmp_path)
    assert not report.passed
    assert report.reasons == ["the batch has 3 rows, outside row_count [5, inf]"]
    assert sorted((c.check, c.failing_count) for c in report.checks) == [("not_null", 1), ("row_count [5, inf]", 3)]
    assert by_row == {1: ["a:not_null"]}
    assert list(valid["a"]) == [1, 3] and str(valid["a"].dtype) == "Int64"


def test_validating_an_unknown_batch(tmp_path: Path) -> None:
    project, store = run(make_project(tmp_path, good_rows(3)))
    with pytest.raises(TableError, match=r"batch 'nope' is not in table 'raw'"):
        validate_batch(project.config.contract, store, "nope", root=project.root, reports_dir=tmp_path)


def test_cli_exit_code_3_and_summary_on_failure(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    lines = good_rows()
    lines[1] = "0,500.0,a,2024-01-01 00:00:00"
    root = make_project(tmp_path, lines, rate=0.0)
    res = cli("ingest", "rows", "--batch-id", "b7", cwd=root)
    assert res.returncode == 3, res.stderr
    assert "failed checks" in res.stdout and "max 100" in res.stdout and "500.0" in res.stdout
    assert "batch 'b7' failed the data contract: 5.00% of rows failed" in res.stderr.replace("\n", " ")
    again = cli("validate", "--batch-id", "b7", "--project", str(root))
    assert again.returncode == 3
    assert "FAILED" in again.stdout


def _season_project(root: Path, rate: float, row_count: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "loopline.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: demo
            model: {{name: demo, target: y, keys: [id]}}
            sources:
              first: {{kind: csv, path: first.csv}}
              second: {{kind: csv, path: second.csv}}
            contract:
              max_failure_rate: {rate}
              {row_count}
              columns:
                id: {{type: int, nullable: false, unique: true}}
                season: {{type: int, min: 0, max: 3}}
                y: {{type: float}}
            environments: {{dev: {{}}}}
            """
        )
    )
    (root / "first.csv").write_text("id,season,y\n" + "".join(f"{i},{i % 4},{i}.5\n" for i in range(100)))
    return root


@pytest.mark.parametrize("bad_at", [5, 30_000])  # inside and far past DuckDB's type-sniffing sample
def test_an_uncoercible_value_is_a_quarantined_row_and_good_rows_land(tmp_path: Path, bad_at: int) -> None:
    root = _season_project(tmp_path, rate=0.01)
    n = max(100, bad_at + 10)
    text = "id,season,y\n" + "".join(f"{i},{'spring' if i == bad_at else i % 4},{i}.5\n" for i in range(n))
    (root / "second.csv").write_text(text)
    project = load_project(root)
    run_pipeline(project, "first", batch_id="b1")  # raw now holds `season` as an int column
    for i in range(2):  # twice: re-running replaces, never duplicates
        result = run_pipeline(project, "second", batch_id="b2")
        assert result.validation.failing_rows == 1 and result.features.rows == n - 1, i
    (check,) = result.validation.checks
    assert (check.check, check.column, check.failing_count, check.examples) == ("type int", "season", 1, ["spring"])
    store = DeltaStore(project.storage_root)
    (bad,) = store.read("quarantine").to_pylist()
    assert bad["id"] == bad_at and bad["season"] is None and bad["_failed_checks"] == "season:type int"
    assert json.loads(bad["_type_errors"]) == {"season": "spring"}
    assert store.schema("raw").field("season").type == pa.int64()


def test_uncoercible_values_above_the_failure_rate_stop_the_batch_with_a_report(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    root = _season_project(tmp_path, rate=0.0)
    (root / "second.csv").write_text(
        "id,season,y\n" + "".join(f"{i},{'spring' if i < 3 else 1},1.0\n" for i in range(20))
    )
    assert cli("ingest", "first", cwd=root).returncode == 0
    r = cli("ingest", "second", "--batch-id", "b2", cwd=root)
    assert r.returncode == 3, r.stderr
    assert "type int" in r.stdout and "spring" in r.stdout
    assert "15.00% of rows failed" in r.stderr.replace("\n", " ")
    assert DeltaStore(load_project(root).storage_root).read("quarantine").num_rows == 3


def test_a_missing_contract_column_is_schema_drift_not_null_failures(tmp_path: Path) -> None:
    root = _season_project(tmp_path, rate=0.0)
    (root / "second.csv").write_text("id,y\n" + "".join(f"{i},1.0\n" for i in range(500, 520)))
    project = load_project(root)
    run_pipeline(project, "first", batch_id="b1")  # `season` exists in raw from this batch
    store = DeltaStore(project.storage_root)
    before = store.version("raw")
    with pytest.raises(ValidationFailed, match=r"schema drift: missing_column season") as err:
        run_pipeline(project, "second", batch_id="b2")
    report = err.value.report
    assert [(d.kind, d.column) for d in report.drift] == [("missing_column", "season")]  # type: ignore[attr-defined]
    assert report.checks == [] and Path(report.report_path).exists()  # type: ignore[attr-defined]
    assert store.version("raw") == before  # nothing committed


def test_row_count_bounds_are_checked_before_raw_is_written(tmp_path: Path) -> None:
    root = _season_project(tmp_path, rate=0.0, row_count="row_count: {min: 1, max: 50}")
    project = load_project(root)
    with pytest.raises(ValidationFailed, match=r"the batch has 100 rows, outside row_count \[1, 50\]") as err:
        run_pipeline(project, "first", batch_id="b1")
    assert Path(err.value.report.report_path).exists()  # type: ignore[attr-defined]
    assert not DeltaStore(project.storage_root).exists("raw")


def test_validation_streams_in_chunks_and_finds_duplicates_across_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import loopline.validate as validate

    monkeypatch.setattr(validate, "CHUNK_ROWS", 7)
    seen: list[int] = []
    real = validate.check_frame
    monkeypatch.setattr(validate, "check_frame", lambda df, *a, **k: seen.append(len(df)) or real(df, *a, **k))
    lines = good_rows(40)
    lines[35] = "3,4.5,a,2024-01-01 00:00:00"  # duplicates id 3, five chunks apart
    project, store = run(make_project(tmp_path, lines, rate=0.1))
    outcome = validate_batch(project.config.contract, store, "b1", root=project.root, reports_dir=reports_dir(project))
    assert max(seen) == 7 and sum(seen) == 40  # never the whole batch at once
    assert [(c.check, c.column, c.failing_count) for c in outcome.report.checks] == [("unique", "id", 2)]
    assert sorted(store.read("quarantine").column("id").to_pylist()) == [3, 3]
    assert len(outcome.valid) == 38


def test_text_datetimes_with_an_offset_are_converted_to_utc(tmp_path: Path) -> None:
    """A bad date keeps the column as text; the cast then converts offsets to UTC, never cuts them off."""
    from datetime import datetime

    root = tmp_path
    (root / "loopline.yaml").write_text(
        textwrap.dedent(
            """\
            project: demo
            model: {name: demo, target: y, keys: [id]}
            sources: {first: {kind: csv, path: first.csv}}
            contract:
              max_failure_rate: 0.5
              columns:
                id: {type: int, nullable: false, unique: true}
                ts: {type: datetime}
                y: {type: float}
            environments: {dev: {}}
            """
        )
    )
    (root / "first.csv").write_text(
        "id,ts,y\n1,2011-01-01T05:00:00-05:00,1.0\n2,2011-01-01 05:00:00,2.0\n3,not a date,3.0\n"
    )
    run_pipeline(load_project(root), "first", batch_id="b1")
    raw = {r["id"]: r["ts"] for r in DeltaStore(load_project(root).storage_root).read("raw").to_pylist()}
    assert raw[1].replace(tzinfo=None) == datetime(2011, 1, 1, 10, 0) and raw[2].replace(tzinfo=None) == datetime(
        2011, 1, 1, 5, 0
    )
    (bad,) = DeltaStore(load_project(root).storage_root).read("quarantine").to_pylist()
    assert bad["id"] == 3 and bad["_failed_checks"] == "ts:type datetime"  # "not a date" is no datetime
