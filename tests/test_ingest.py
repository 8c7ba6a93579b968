"""Ingest: CSV / Parquet / Delta / SQL sources into `raw`, batch ids, idempotent re-ingest, errors."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from loopline.config import load_project
from loopline.errors import SourceError
from loopline.ingest import _ContentHash, ingest, ingest_job
from loopline.sources import parse_params
from loopline.tables import DeltaStore

CONFIG = textwrap.dedent(
    """\
    project: demo
    model: {name: demo, target: y, keys: [id]}
    sources:
      points: {kind: csv, path: data/points.csv}
      points_pq: {kind: parquet, path: data/points.parquet}
      points_delta: {kind: delta, path: data/points_delta}
      points_sql:
        kind: sql
        files: {p: data/points.csv, q: data/points.parquet}
        query: "SELECT p.*, $tag AS tag FROM p JOIN q USING (id) WHERE p.id < $limit ORDER BY id"
      named:
        kind: sql
        files: {p: data/points.csv}
        query: "SELECT *, 'points-' || $day AS _batch_id FROM p"
      typed: {kind: sql, query: "SELECT 200::UTINYINT AS u, NULL AS n, TIMESTAMP_NS '2024-01-01 10:00:00' AS t"}
      missing: {kind: csv, path: data/nope.csv}
      bad_sql: {kind: sql, files: {p: data/points.csv}, query: "SELECT nope FROM p"}
      not_delta: {kind: delta, path: data}
    contract:
      columns:
        id: {type: int, nullable: false, unique: true}
        x: {type: float, min: 0, max: 100}
        y: {type: float}
    environments: {dev: {}}
    """
)


@pytest.fixture
def project(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "loopline.yaml").write_text(CONFIG)
    data = tmp_path / "data"
    data.mkdir()
    table = pa.table(
        {"id": list(range(200)), "x": [i % 50 + 0.5 for i in range(200)], "y": [2.0 * i for i in range(200)]}
    )
    pq.write_table(table, data / "points.parquet")
    write_deltalake(str(data / "points_delta"), table)
    rows = ["id,x,y"] + [f"{i},{i % 50 + 0.5},{2.0 * i}" for i in range(200)]
    (data / "points.csv").write_text("\n".join(rows) + "\n")
    return load_project(tmp_path)


@pytest.fixture
def store(project):  # type: ignore[no-untyped-def]
    return DeltaStore(project.storage_root)


@pytest.mark.parametrize("source", ["points", "points_pq", "points_delta"])
def test_file_sources_land_in_raw_with_loopline_columns(project, store, source: str) -> None:
    result = ingest(project, source, store=store)
    assert result.rows == 200
    assert re.fullmatch(rf"{source}-[0-9a-f]{{12}}", result.batch_id)
    raw = store.read("raw")
    assert raw.num_rows == 200
    assert raw.schema.field("_ingested_at").type == pa.timestamp("us", tz="UTC")
    assert set(raw.column("_batch_id").to_pylist()) == {result.batch_id}
    assert set(raw.column("_source").to_pylist()) == {source}
    assert sorted(raw.column("id").to_pylist()) == list(range(200))


def test_sql_source_binds_params_and_they_change_the_batch_id(project, store) -> None:
    a = ingest(project, "points_sql", store=store, params={"limit": 10, "tag": "a"})
    b = ingest(project, "points_sql", store=store, params={"limit": 10, "tag": "b"})
    assert a.rows == b.rows == 10
    assert a.batch_id != b.batch_id
    raw = store.read("raw")
    assert raw.num_rows == 20
    assert sorted(set(raw.column("tag").to_pylist())) == ["a", "b"]


def test_types_delta_cannot_store_are_widened(project, store) -> None:
    ingest(project, "typed", store=store)
    schema = store.schema("raw")
    assert (schema.field("u").type, schema.field("n").type) == (pa.int16(), pa.string())
    assert schema.field("t").type.unit == "us"
    assert store.read("raw").column("u").to_pylist() == [200]


def test_the_query_can_name_the_batch(project, store) -> None:
    result = ingest(project, "named", store=store, params={"day": "2024-01-02"})
    assert result.batch_id == "points-2024-01-02"
    assert "_batch_id" not in result.columns


def test_reingesting_a_batch_replaces_it_in_one_commit(project, store) -> None:
    first = ingest(project, "points", store=store)
    second = ingest(project, "points", store=store)
    assert second.batch_id == first.batch_id  # same content, same derived id
    assert second.raw_version == first.raw_version + 1
    assert store.read("raw").num_rows == 200
    third = ingest(project, "points_pq", store=store, batch_id=first.batch_id)
    assert third.raw_version == second.raw_version + 1
    raw = store.read("raw")
    assert raw.num_rows == 200
    assert set(raw.column("_source").to_pylist()) == {"points_pq"}
    ingest(project, "points", store=store, batch_id="other")
    counts = pc.value_counts(store.read("raw").column("_batch_id")).to_pylist()
    assert sorted(c["counts"] for c in counts) == [200, 200]


def test_content_hash_does_not_depend_on_batching() -> None:
    n = 20_000
    table = pa.table({"a": list(range(n)), "b": [None if i % 7 == 0 else str(i) for i in range(n)]})
    one, many = _ContentHash(table.schema, {}), _ContentHash(table.schema, {})
    for b in table.to_batches():
        one.update(b)
    for b in table.to_batches(max_chunksize=777):
        many.update(b)
    assert one.hexdigest() == many.hexdigest()


def test_ingest_job_defaults_to_the_first_source(project) -> None:
    ingest(project, "points_sql", store=DeltaStore(project.storage_root), params={"limit": 3, "tag": "a"})
    result = ingest_job(project)  # the `tag` column other batches added to raw is not drift here
    assert result.ingest.source == "points"
    assert result.features.rows == 200
    assert "200 rows in" in result.summary()


@pytest.mark.parametrize(
    ("source", "params", "match"),
    [
        ("nope", None, r"source 'nope' is not defined under `sources` in loopline.yaml"),
        ("missing", None, r"source 'missing': sources.missing.path = .*data/nope.csv does not exist \(expected a CSV"),
        ("bad_sql", None, r"source 'bad_sql': the query failed: .*nope"),
        ("points_sql", {"limit": 3}, r"source 'points_sql': the query needs parameter\(s\) tag"),
        ("points_sql", {"limit": 3, "tag": "a", "x": 1}, r"unknown parameter\(s\) x; the query uses: limit, tag"),
        ("points", {"limit": 3}, r"source 'points' \(kind csv\) takes no parameters, got limit"),
        ("not_delta", None, r"source 'not_delta': .*data is not a Delta table \(expected a folder with a _delta_log\)"),
        ("points_sql", {"limit": -1, "tag": "a"}, r"source 'points_sql' returned no rows with limit=-1, tag=a"),
    ],
)
def test_source_errors_name_the_source_and_what_was_expected(project, store, source, params, match) -> None:
    with pytest.raises(SourceError, match=match):
        ingest(project, source, store=store, params=params)


def test_bad_params_and_batch_ids_are_refused(project, store) -> None:
    assert parse_params(["month=4", "rate=0.5", "city=dc"], "s") == {"month": 4, "rate": 0.5, "city": "dc"}
    with pytest.raises(SourceError, match=r"source 's': --param must look like name=value, got 'month'"):
        parse_params(["month"], "s")
    with pytest.raises(SourceError, match=r"batch id must be 1-128 letters.*got 'a b'"):
        ingest(project, "points", store=store, batch_id="a b")


def test_cli_ingest_and_its_errors(project, cli) -> None:
    ok = cli("ingest", "points", "--batch-id", "b1", cwd=project.root)
    assert ok.returncode == 0, ok.stderr
    assert "b1" in ok.stdout and "passed" in ok.stdout and "200" in ok.stdout
    bad = cli("ingest", "nope", "--project", str(project.root))
    assert bad.returncode == 1
    assert "source 'nope' is not defined" in bad.stderr
    assert "Hint: defined sources: points" in bad.stderr.replace("\n", " ")


def test_a_ragged_csv_names_its_bad_lines(project, store) -> None:
    rows = ["id,x,y"] + [f"{i},{i % 50 + 0.5},{2.0 * i}" for i in range(100)]
    rows[11] = "10,1.5,2.0,99"
    rows[21] = "20"
    (project.root / "data" / "points.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(SourceError, match=r"malformed line\(s\): line 12 \(.*4.*\), line 22 \(.*1.*\)"):
        ingest(project, "points", store=store)
    assert not store.exists("raw")
