"""Feedback rows take the key types of the tables monitoring joins them with, and the label type of the model."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from loopline.labels import LabelSpec, spec_for
from loopline.serving.errors import Conflict
from loopline.serving.feedback import _conform, build_table, parse_items
from loopline.serving.schema import InputError
from loopline.tables import DeltaStore

REGRESSION = LabelSpec("regression", "float")


def test_keys_follow_predictions_then_feedback(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ts = pa.array([datetime(2011, 1, 1, 5, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    store.append("predictions", pa.table({"ts": ts, "prediction": [1.0]}))
    server = SimpleNamespace(store=store, keys=("ts",), feedback_schema=None)
    items = parse_items(b'[{"keys": {"ts": "2011-01-01T05:00:00"}, "label": 3}]', ("ts",), REGRESSION)
    table = _conform(server, build_table(items, ("ts",), REGRESSION))  # type: ignore[arg-type]
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.column("ts")[0].as_py() == datetime(2011, 1, 1, 5, tzinfo=UTC)
    store.append("feedback", table)
    bad = parse_items(b'{"keys": {"ts": "yesterday"}, "label": 3}', ("ts",), REGRESSION)
    with pytest.raises(InputError, match=r"keys.ts: values must be timestamp\[us, tz=UTC\]"):
        _conform(server, build_table(bad, ("ts",), REGRESSION))  # type: ignore[arg-type]


def _items(*labels: str) -> bytes:
    return ("[" + ", ".join(f'{{"request_id": "a", "label": {v}}}' for v in labels) + "]").encode()


@pytest.mark.parametrize(
    ("spec", "body", "labels", "arrow"),
    [
        (spec_for("classification", "int", [0, 1]), _items("1", "1.0", '"1"', "0"), [1, 1, 1, 0], pa.int64()),
        (
            spec_for("classification", "bool", [False, True]),
            _items("true", '"True"', "0"),
            [True, True, False],
            pa.bool_(),
        ),
        (spec_for("classification", "str", ["a", "b"]), b'{"request_id": "a", "label": "b"}', ["b"], pa.string()),
        (REGRESSION, _items("3", '"2.5"'), [3.0, 2.5], pa.float64()),
    ],
    ids=["int", "bool", "str", "regression"],
)
def test_labels_are_typed(spec: LabelSpec, body: bytes, labels: list[object], arrow: pa.DataType) -> None:
    table = build_table(parse_items(body, (), spec), (), spec)
    assert table.schema.field("label").type == arrow
    assert table.column("label").to_pylist() == labels
    assert [type(v) for v in table.column("label").to_pylist()] == [type(v) for v in labels]


def test_a_json_boolean_is_not_a_number() -> None:
    with pytest.raises(InputError, match=r"body\.label: True is a boolean, expected an integer label; expected one "
                       r"of the model's classes \[0, 1\] \(label type int\)"):  # fmt: skip
        parse_items(b'{"request_id": "a", "label": true}', (), spec_for("classification", "int", [0, 1]))
    with pytest.raises(InputError, match=r"body\.label: must be a number for a regression model, got True"):
        parse_items(b'{"request_id": "a", "label": true}', (), REGRESSION)
    with pytest.raises(InputError, match=r"\[0\]\.label: 10{20} is out of range for an int64 label"):
        parse_items(b'[{"request_id": "a", "label": 100000000000000000000}]', (), LabelSpec("classification", "int"))


def test_a_feedback_table_of_another_label_type_is_a_conflict(tmp_path: Path) -> None:
    """Labels are never cast to the feedback table's type: text labels stored before stay text, an int model's
    labels are refused with both types named (409), nothing written."""
    store = DeltaStore(str(tmp_path))
    spec = spec_for("classification", "int", [0, 1])
    store.append("feedback", pa.table({"request_id": ["x"], "label": pa.array(["1"], pa.string())}))
    server = SimpleNamespace(store=store, keys=(), feedback_schema=None)
    table = build_table(parse_items(b'{"request_id": "a", "label": 1}', (), spec), (), spec)
    with pytest.raises(Conflict, match=r"the feedback table's label column is string, but the model's "
                       r"labels are int64") as err:  # fmt: skip
        _conform(server, table)  # type: ignore[arg-type]
    assert err.value.status == 409
    text = spec_for("classification", "str", ["0", "1"])
    ok = _conform(server, build_table(parse_items(b'{"request_id": "a", "label": 1}', (), text), (), text))  # type: ignore[arg-type]
    assert ok.column("label").to_pylist() == ["1"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"request_id": "a", "label": [1]}', 422, "label: must be a boolean, a number or a string, got list"),
        (b'[{"request_id": "a", "label": 1}, {"request_id": "a", "label": {"x": 1}}]', 422,
         "[1].label: must be a boolean, a number or a string, got object"),
        (b'{"request_id": "a", "label": null}', 422, "label: must be a boolean, a number or a string, got null"),
        (b'[{"request_id": "a"}]', 422, "[0].label: Field required"),
        (b'{"keys": {"id": [1]}, "label": 1}', 422, "keys.id: must be a boolean, a number or a string, got list"),
        (b'[1]', 422, "[0]: Input should be an object"),
        (b'{"request_id": "a", "label": 1', 400, "malformed JSON"),
        (b'{"request_id": "a", "label": Infinity}', 422, "body.label: Infinity is not a label (not a finite number)"),
        (b'[{"request_id": "a", "label": -Infinity}]', 422, "[0].label: -Infinity is not a label"),
        (b'{"request_id": "a", "label": NaN}', 422, "body.label: NaN is not a label"),
        (b'{"request_id": "a", "label": 1e999}', 422, "body.label: Infinity is not a label"),
        (b'{"keys": {"id": Infinity}, "label": 1}', 422, "body.keys.id: Infinity is not a key value"),
        (b'{"keys": {"id": NaN}, "label": 1}', 422, "body.keys.id: NaN is not a key value"),
    ],
)  # fmt: skip
def test_malformed_items_name_the_field(body: bytes, status: int, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_items(body, ("id",), spec_for("classification", "int", [1, 2]))
    assert err.value.status == status and err.value.message.startswith(message), err.value.message
