"""Publishing predictions to the real PostgreSQL server: idempotent upsert in one transaction."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from loopline.config import Project
from loopline.errors import LooplineError
from loopline.tables import DeltaStore
from test_batch import copy_project, trained_project

pytestmark = pytest.mark.postgres


@pytest.fixture
def scored(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Project:
    from loopline.batch import score

    project = copy_project(trained_project(tmp_path_factory), tmp_path / "proj")
    score(project, batch_id="april")
    return project


def _rows(url: str, table: str = "predictions") -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT id, prediction, model_name, model_version, run_id, scored_at, _batch_id, out_of_range "
            f"FROM {table} ORDER BY _batch_id, id"
        ).fetchall()


def test_publish_twice_gives_the_same_rows(scored: Project, pg_url: str) -> None:
    from loopline.publish import publish

    first = publish(scored, to=pg_url)
    assert (first.rows, first.inserted, first.updated, first.deleted) == (300, 300, 0, 0)
    rows = _rows(pg_url)
    assert len(rows) == 300
    snapshot = DeltaStore(scored.storage_root).read("predictions").sort_by("id")
    assert [r[0] for r in rows] == snapshot["id"].to_pylist()
    assert [r[1] for r in rows] == snapshot["prediction"].to_pylist()
    assert [r[5] for r in rows] == snapshot["scored_at"].to_pylist()  # timestamptz round-trips exactly
    assert [r[7] for r in rows] == snapshot["out_of_range"].to_pylist()

    second = publish(scored, to=pg_url)
    assert (second.rows, second.inserted, second.updated, second.deleted) == (300, 0, 0, 0)
    assert _rows(pg_url) == rows

    import psycopg

    with psycopg.connect(pg_url) as conn:
        pk = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'predictions'::regclass AND i.indisprimary "
            "ORDER BY a.attname"
        ).fetchall()
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'predictions'"
            ).fetchall()
        )
    assert [r[0] for r in pk] == ["_batch_id", "id"]
    assert types["prediction"] == "double precision" and types["scored_at"] == "timestamp with time zone"
    assert types["id"] == "bigint" and types["out_of_range"] == "boolean"


def test_rescored_batch_updates_and_drops_vanished_keys(scored: Project, pg_url: str) -> None:
    from loopline.batch import score
    from loopline.publish import publish

    publish(scored, to=pg_url, target_table="crm.scores")
    store = DeltaStore(scored.storage_root)
    feats = store.read("features")
    store.overwrite("features", feats.filter(pa.compute.less(feats["id"], 250)))
    score(scored, batch_id="april")  # the April batch now has 250 rows and a new scored_at
    again = publish(scored, to=pg_url, target_table="crm.scores")
    assert (again.rows, again.inserted, again.updated, again.deleted) == (250, 0, 250, 50)
    assert again.target == "crm.scores"
    assert len(_rows(pg_url, "crm.scores")) == 250


def test_unreachable_server_names_url_without_password(scored: Project) -> None:
    from _support import free_port
    from loopline.publish import publish

    url = f"postgresql://alice:s3cret@127.0.0.1:{free_port()}/warehouse"
    with pytest.raises(
        LooplineError,
        match=r"cannot connect to PostgreSQL at "
        r"postgresql://alice:\*\*\*@127\.0\.0\.1:\d+/warehouse",
    ) as err:
        publish(scored, to=url)
    assert "s3cret" not in str(err.value) and "Hint:" in str(err.value)


def test_not_a_postgres_url(scored: Project) -> None:
    from loopline.publish import publish

    with pytest.raises(LooplineError, match=r"--to must be a postgresql:// URL, got 'mysql://bob:\*\*\*@db/x'"):
        publish(scored, to="mysql://bob:pw@db/x")


def test_cli_publish(scored: Project, pg_url: str) -> None:
    from _support import run_cli

    for _ in range(2):
        res = run_cli("publish", "predictions", "--to", pg_url, "--table", "preds", "--project", str(scored.root))
        assert res.returncode == 0, res.stderr
    assert "0 inserted, 0 updated" in res.stdout
    assert len(_rows(pg_url, "preds")) == 300
    bad = run_cli("publish", "predictions", "--to", "postgresql://nobody@127.0.0.1:1/x", "--project", str(scored.root))
    assert bad.returncode == 1 and "cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:1/x" in bad.stderr


def test_classifier_predictions_publish_typed_labels_and_probabilities(tmp_path: Path, pg_url: str) -> None:
    """Text labels stay text, probability is a double, the per-class probabilities a jsonb object."""
    import psycopg

    from loopline.batch import score
    from loopline.publish import publish
    from test_batch import train_classifier

    project, _, _ = train_classifier(tmp_path, "str-multiclass")
    score(project, batch_id="all")
    assert publish(project, to=pg_url).inserted == 600
    snapshot = DeltaStore(project.storage_root).read("predictions").sort_by("id")
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT prediction, probability, probabilities FROM predictions ORDER BY id").fetchall()
        kinds = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'predictions'"
            ).fetchall()
        )
    assert (kinds["prediction"], kinds["probability"], kinds["probabilities"]) == ("text", "double precision", "jsonb")
    assert [r[0] for r in rows] == snapshot["prediction"].to_pylist()
    assert [r[1] for r in rows] == snapshot["probability"].to_pylist()
    assert rows[0][2] == dict(snapshot["probabilities"][0].as_py())
    assert publish(project, to=pg_url).updated == 0  # idempotent with jsonb too
