"""The scale-out tracking path: MLflow tracking + registry on the real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import pytest

from _lifecycle import make_project, one_thread  # noqa: F401  (fixture, used by pytestmark)
from loopline import registry, tracking
from loopline.training import train

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("one_thread")]


def test_db_uri_uses_the_psycopg3_driver() -> None:
    import importlib.util

    driver = "postgresql" if importlib.util.find_spec("psycopg2") else "postgresql+psycopg"
    assert tracking.db_uri("postgresql://u@h:5432/db") == f"{driver}://u@h:5432/db"
    assert tracking.db_uri("postgres://u@h/db") == f"{driver}://u@h/db"
    assert tracking.db_uri("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert tracking.db_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_train_promote_rollback_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    p = make_project(tmp_path, {"environments": {"dev": {"tracking_uri": pg_url}}})
    assert p.tracking_uri.startswith("postgresql://")
    first = train(p)
    assert first.gate.passed
    registry.promote(p)
    second = train(p, params_override={"max_iter": 60})
    assert second.gate.passed and second.gate.champion_version == "1"
    registry.promote(p)
    assert str(tracking.require_champion(p).version) == "2"
    back = registry.rollback(p, reason="pg rollback")
    assert (back.from_version, back.to_version) == ("2", "1")
    assert str(tracking.require_champion(p).version) == "1"
    assert [e.action for e in registry.history(p)] == ["rollback", "promote", "promote"]
    c = tracking.client(p)
    assert c.get_run(first.run_id).data.tags["loopline.features_version"] == "0"
    # the registry really lives in PostgreSQL
    import psycopg

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT name, version FROM model_versions ORDER BY version").fetchall()
    assert rows == [("dev.demo", 1), ("dev.demo", 2)]
