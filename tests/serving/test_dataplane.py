"""The data plane without HTTP: the served champion predicts, logs and takes feedback; its refusals are
ServingErrors with their status (the routers only translate)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from _serving import log_rows, read_log

from loopline.config import load_project
from loopline.serving.dataplane import DataPlane
from loopline.serving.errors import InputError, NotFound, NotReady, Unprocessable

ROW = {"x": 1.5, "n": 3, "flag": True, "email": "a@example.com"}


def test_a_plane_without_a_model_is_not_ready(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPLINE_REDACT_SALT", "s")
    plane = DataPlane(load_project(project, "prod"))  # not started: nothing loaded
    with pytest.raises(NotReady, match=r"^no model is being served: no model loaded yet$") as err:
        plane.model()
    assert err.value.status == 503
    with pytest.raises(NotReady):
        plane.metadata("prod.demo", None)
    with pytest.raises(NotFound, match=r"unknown model 'nope'; this server serves 'prod.demo'"):
        plane.model_ready("nope", None)
    assert plane.readiness() is None and not plane.model_ready("prod.demo", None)


async def _session(plane: DataPlane) -> dict[str, Any]:
    await plane.start()
    try:
        model = plane.model()
        body = json.dumps({"dataframe_records": [ROW, {**ROW, "x": 40.0}]}).encode()
        out = await plane.infer_mlflow(model, body, "application/json", time.perf_counter())
        with pytest.raises(InputError, match=r"missing column 'n'") as bad:
            await plane.infer_mlflow(model, b'{"dataframe_records": [{"x": 1}]}', "application/json", 0.0)
        assert bad.value.status == 400
        with pytest.raises(Unprocessable, match=r"column 'n': 9007199254740993 at row 0 is beyond"):
            await plane.infer_mlflow(model, b'{"dataframe_records": [{"x": 1, "n": 9007199254740993, "flag": true}]}',
                                     None, 0.0)  # fmt: skip
        with pytest.raises(NotFound, match=r"model 'prod.demo' version '9' is not served \(serving version 1\)"):
            plane.served("prod.demo", "9")
        v2 = {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1.5, 3, 1]}]}
        content, binary = await plane.infer_v2(
            plane.served("prod.demo", "1"), "prod.demo", json.dumps(v2).encode(), None, time.perf_counter()
        )
        feedback = await plane.feedback(json.dumps({"request_id": out["request_ids"][0], "label": 2.5}).encode())
        meta = plane.metadata("prod.demo", None)
    finally:
        await plane.stop()
    return {"out": out, "v2": json.loads(content), "binary": binary, "feedback": feedback, "meta": meta}


def test_the_plane_predicts_logs_and_takes_feedback(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPLINE_REDACT_SALT", "s")
    plane = DataPlane(load_project(project, "prod"))
    got = asyncio.run(_session(plane))
    out = got["out"]
    assert out["model_version"] == "1" and len(out["predictions"]) == 2 and len(set(out["request_ids"])) == 2
    assert got["v2"]["model_version"] == "1" and got["binary"] is None
    assert got["v2"]["outputs"][0]["data"] == [pytest.approx(out["predictions"][0])]
    assert got["feedback"]["status"] == "ok" and got["feedback"]["unknown_request_ids"] == []
    assert [c["name"] for c in got["meta"]["inputs"]] == ["x", "n", "flag"]
    assert plane.readiness() == {"ready": True, "model": "prod.demo", "version": "1"}
    assert log_rows(project) == 3  # stop() committed the buffer: two scoring rows, one V2 row
    log = read_log(project)
    assert sorted(log.column("endpoint").to_pylist()) == ["invocations", "invocations", "v2_infer"]
    assert "a@example.com" not in log.column("email").to_pylist()  # redacted (hashed) as configured
