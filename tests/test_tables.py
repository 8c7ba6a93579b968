from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from loopline.errors import SqlError, TableError
from loopline.tables import DeltaStore, batches, run_readonly_sql


def rows(n: int, batch: str, start: int = 0) -> pa.Table:
    return pa.table({"_batch_id": [batch] * n, "id": list(range(start, start + n)), "v": [float(i) for i in range(n)]})


@pytest.fixture
def store(tmp_path: Path) -> DeltaStore:
    return DeltaStore(str(tmp_path / "tables"))


def test_append_and_versions(store: DeltaStore) -> None:
    assert store.append("raw", rows(3, "a")) == 0
    assert store.append("raw", rows(2, "b", 3)) == 1
    assert store.read("raw").num_rows == 5
    assert store.read("raw", version=0).num_rows == 3
    assert store.names() == ["raw"]
    info = store.info("raw")
    assert (info.version, info.rows, info.files) == (1, 5, 2)
    assert info.size_bytes > 0 and info.last_operation == "WRITE"


def test_compact_merges_small_files_keeps_rows_and_time_travel(store: DeltaStore) -> None:
    for i in range(6):
        store.append("log", rows(2, f"b{i}", 2 * i))
    before = store.version("log")
    assert store.info("log").files == 6
    removed, added = store.compact("log")
    assert (removed, added) == (6, 1)
    info = store.info("log")
    assert (info.files, info.rows, info.last_operation) == (1, 12, "OPTIMIZE")
    assert sorted(store.read("log").column("id").to_pylist()) == list(range(12))
    assert store.read("log", version=before).num_rows == 12  # the old files stay until vacuum
    store.append("log", rows(1, "after", 12))  # appends go on after a compaction
    assert store.info("log").files == 2


def test_appenders_keep_handles_across_other_writers_and_compaction(store: DeltaStore) -> None:
    a, b = store.appender("log", writer="a"), store.appender("log", writer="b")  # two server workers
    a(rows(2, "a0"))  # creates the table
    for i in range(3):
        a(rows(2, f"a{i + 1}", 10 * i))
        b(rows(1, f"b{i}", 100 + i))
    store.compact("log")  # another process rewrites the files under both handles
    a(rows(1, "a-after", 500))
    b(rows(1, "b-after", 600))
    t = store.read("log")
    assert t.num_rows == 2 + 3 * 3 + 2
    assert sorted(set(t.column("_batch_id").to_pylist())) == sorted(
        ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "a-after", "b-after"]
    )
    assert store.history("log", 1)[0]["writer"] == '"b"'


def test_appender_refuses_a_wrong_type_and_recovers(store: DeltaStore) -> None:
    app = store.appender("log")
    app(rows(1, "x"))
    app(rows(1, "y"))
    with pytest.raises(TableError, match="appending to table 'log' failed"):
        app(pa.table({"_batch_id": [1], "id": ["not an int"], "v": [1.0]}))
    app(rows(1, "z"))
    assert store.read("log").num_rows == 3


def test_compact_missing_table(store: DeltaStore) -> None:
    with pytest.raises(TableError, match="nope"):
        store.compact("nope")


def test_replace_batch_is_idempotent_and_one_commit(store: DeltaStore) -> None:
    store.replace_batch("raw", rows(3, "a"), "a")
    store.replace_batch("raw", rows(4, "b", 10), "b")
    v = store.replace_batch("raw", rows(3, "a"), "a")
    assert v == 2
    t = store.read("raw")
    assert t.num_rows == 7
    assert sorted(pc.unique(t["_batch_id"]).to_pylist()) == ["a", "b"]
    assert store.history("raw", 1)[0]["batch_id"] == '"a"'


def test_replace_where_with_quotes_in_value(store: DeltaStore) -> None:
    store.replace_batch("raw", rows(2, "o'brien"), "o'brien")
    store.replace_batch("raw", rows(2, "o'brien"), "o'brien")
    assert store.read("raw").num_rows == 2


def test_merge_upserts_by_keys(store: DeltaStore) -> None:
    store.merge("feedback", pa.table({"id": [1, 2], "label": [1.0, 2.0]}), ["id"])
    store.merge("feedback", pa.table({"id": [2, 3], "label": [20.0, 3.0]}), ["id"])
    got = dict(zip(*store.read("feedback").to_pydict().values(), strict=True))
    assert got == {1: 1.0, 2: 20.0, 3: 3.0}
    with pytest.raises(TableError, match=r"merge into 'feedback' needs at least one key column"):
        store.merge("feedback", pa.table({"id": [1]}), [])


def test_time_travel_by_timestamp(store: DeltaStore) -> None:
    store.append("raw", rows(1, "a"))
    between = datetime.now(UTC)
    time.sleep(0.05)
    store.append("raw", rows(1, "b", 1))
    assert store.read("raw", timestamp=between).num_rows == 1
    assert store.read("raw").num_rows == 2


def test_scan_streams_bounded_batches(store: DeltaStore) -> None:
    store.append("raw", rows(10_000, "a"))
    reader = store.scan("raw", columns=["id"], batch_size=1000)
    sizes = [b.num_rows for b in batches(reader)]
    assert sum(sizes) == 10_000 and max(sizes) <= 1000
    with pytest.raises(TableError, match=r"table 'raw' has no column\(s\) \['nope'\]"):
        store.scan("raw", columns=["nope"])


def test_missing_table_and_bad_version(store: DeltaStore) -> None:
    with pytest.raises(TableError, match=r"table 'features' does not exist"):
        store.read("features")
    store.append("raw", rows(1, "a"))
    with pytest.raises(TableError, match=r"cannot open table 'raw' at version 7"):
        store.read("raw", version=7)
    with pytest.raises(TableError, match=r"table name 'x; drop' is not valid"):
        store.uri("x; drop")


def test_schema_evolution_on_append(store: DeltaStore) -> None:
    store.append("raw", rows(1, "a"))
    store.append("raw", rows(1, "b").append_column("extra", pa.array(["x"])))
    got = store.read("raw").sort_by("_batch_id")
    assert got.column("extra").to_pylist() == [None, "x"]


def test_retention_deletes_old_rows_and_vacuums(store: DeltaStore, tmp_path: Path) -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    ts = [now - timedelta(days=d) for d in (100, 95, 10, 1)]
    store.append("raw", pa.table({"_ingested_at": pa.array(ts, pa.timestamp("us", tz="UTC")), "x": [1, 2, 3, 4]}))
    before = {p.name for p in (tmp_path / "tables" / "raw").glob("*.parquet")}
    result = store.retain("raw", "_ingested_at", timedelta(days=90), now=now)
    assert result.rows_deleted == 2
    assert store.read("raw").column("x").to_pylist() == [3, 4]
    after = {p.name for p in (tmp_path / "tables" / "raw").glob("*.parquet")}
    assert not (before & after), "the files holding deleted rows are physically gone after vacuum"
    assert result.files_removed == len(before)
    with pytest.raises(TableError, match=r"retention of 'raw': no column 'nope'"):
        store.retain("raw", "nope", timedelta(days=1))


CRASHING_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np, pyarrow as pa
    from loopline.tables import DeltaStore
    schema = pa.schema([("_batch_id", pa.string()), ("id", pa.int64()), ("v", pa.float64())])
    def gen():
        for i in range(10_000):
            cols = [pa.array(["a"] * 50_000), pa.array(np.arange(50_000)), pa.array(np.random.rand(50_000))]
            yield pa.record_batch(cols, schema=schema)
            time.sleep(0.005)
    DeltaStore(sys.argv[1]).replace_batch("raw", pa.RecordBatchReader.from_batches(schema, gen()), "a")
    """
)


def test_crash_between_write_and_commit_leaves_previous_version(store: DeltaStore, tmp_path: Path) -> None:
    store.replace_batch("raw", rows(3, "a"), "a")
    table_dir = Path(store.uri("raw"))
    committed = set(table_dir.glob("*.parquet"))
    script = tmp_path / "writer.py"
    script.write_text(CRASHING_WRITER)
    child = subprocess.Popen([sys.executable, str(script), store.root])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until data files of the new write are on disk
            if set(table_dir.glob("*.parquet")) - committed:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the writer never wrote a data file")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert set(table_dir.glob("*.parquet")) - committed, "orphaned files exist: the write was cut mid-way"
    assert store.version("raw") == 0
    assert store.read("raw").to_pydict() == rows(3, "a").to_pydict()
    # the rerun replaces the batch exactly once, and vacuum removes what the crash left behind
    store.replace_batch("raw", rows(5, "a"), "a")
    assert store.read("raw").num_rows == 5
    store.vacuum("raw")
    live = set(table_dir.glob("*.parquet"))
    assert len(live) == 1


def test_readonly_sql(store: DeltaStore) -> None:
    store.append("raw", rows(3, "a"))
    store.append("features", rows(2, "a"))
    con = store.sql()
    out = run_readonly_sql(con, "select count(*) as n from raw join features using (id)").read_all()
    assert out.column("n").to_pylist() == [2]
    for stmt, kind in [
        ("delete from raw", "DELETE"),
        ("insert into raw values (1)", "INSERT"),
        ("copy raw to 'x.csv'", "COPY"),
        ("create table t as select 1", "CREATE"),
        ("attach 'x.db'", "ATTACH"),
        ("set threads = 1", "SET"),
    ]:
        with pytest.raises(SqlError, match=rf"only read-only queries are allowed; this is a {kind} statement"):
            run_readonly_sql(con, stmt)
    with pytest.raises(SqlError, match=r"exactly one SQL statement is allowed, got 2"):
        run_readonly_sql(con, "select 1; select 2")
    with pytest.raises(SqlError, match=r"query failed: .*nope"):
        run_readonly_sql(con, "select * from nope")


def test_sql_is_sandboxed(store: DeltaStore) -> None:
    store.append("raw", rows(3, "a"))
    files = next(Path(store.uri("raw")).glob("*.parquet"))  # the table's own data file
    for query in (
        "select * from read_csv('/etc/passwd')",
        "select * from read_text('/proc/self/environ')",
        "select * from glob('/root/*')",
        f"select * from read_parquet('{files}')",
    ):
        with pytest.raises(SqlError, match=r"query refused: .*file system operations are disabled"):
            run_readonly_sql(store.sql(), query).read_all()
    for query, match in (
        ("install httpfs", r"this is a LOAD statement"),
        ("load httpfs", r"this is a LOAD statement"),
        ("set enable_external_access = true", r"this is a SET statement"),
    ):
        with pytest.raises(SqlError, match=match):
            run_readonly_sql(store.sql(), query)
    con = store.sql()
    run_readonly_sql(con, "select 1").read_all()
    with pytest.raises(Exception, match=r"configuration has been locked"):  # even past the statement filter
        con.execute("set enable_external_access = true")
    with pytest.raises(Exception, match=r"disabled"):
        con.execute("load httpfs")


def test_sql_accepts_pivot_and_leading_comments(store: DeltaStore) -> None:
    store.append("raw", rows(4, "a"))
    for query in (
        "PIVOT (select _batch_id from raw) ON _batch_id USING count(*)",
        "-- how many\nselect count(*) as n from raw",
        "/* how many */ select count(*) as n from raw",
        "  (select count(*) as n from raw)",
    ):
        out = run_readonly_sql(store.sql(), query).read_all()
        assert out.num_rows == 1, query
    with pytest.raises(SqlError, match=r"this is a DELETE statement"):
        run_readonly_sql(store.sql(), "/* select */ delete from raw")


def test_sql_statement_timeout(store: DeltaStore) -> None:
    import time

    slow = "select count(*) from range(1000000000000) a where a.range % 7 = 3"
    start = time.monotonic()
    with pytest.raises(SqlError, match=r"the query ran longer than 0.5 s and was stopped"):
        run_readonly_sql(store.sql(), slow, timeout=0.5).read_all()
    assert time.monotonic() - start < 30
