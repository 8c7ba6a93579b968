"""Protocol parsing and encoding without a server (string columns, V2 binary BYTES, edge cases)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from loopline.labels import LabelSpec, spec_for
from loopline.serving.protocol_v2 import (
    Tensor,
    encode_v2,
    output_metadata,
    output_names,
    output_tensors,
    parse_v2,
    select_outputs,
)
from loopline.serving.protocols import parse_csv, parse_mlflow
from loopline.serving.schema import Column, InputError, Signature

SIG = Signature((Column("city", "string"), Column("age", "integer"), Column("score", "float", required=False)))


def test_records_with_strings_and_optional_column() -> None:
    p = parse_mlflow(
        json.dumps({"dataframe_records": [{"city": "Oslo", "age": 3}, {"city": "Rome", "age": 4, "id": 7}]}).encode(),
        "application/json",
        SIG,
        keys=("id",),
    )
    assert p.n == 2 and p.columns["city"].tolist() == ["Oslo", "Rome"]
    assert p.columns["age"].dtype == np.int32 and "score" not in p.columns
    assert p.passthrough == {"id": [None, 7]}


def test_integer_range_and_types() -> None:
    with pytest.raises(InputError, match=r"column 'age': 3000000000 at row 0 is out of range for integer"):
        parse_mlflow(b'{"inputs": {"city": ["a"], "age": [3000000000]}}', None, SIG)
    with pytest.raises(InputError, match=r"column 'city': 5 at row 1 is a number, expected string"):
        parse_mlflow(b'{"instances": [["a", 1, 0.5], [5, 1, 0.5]]}', None, SIG)


def test_csv_quoting() -> None:
    p = parse_csv(b'city,age\n"New York, NY",5\n', SIG)
    assert p.columns["city"].tolist() == ["New York, NY"] and p.columns["age"].tolist() == [5]
    with pytest.raises(InputError, match="duplicate column names"):
        parse_csv(b"city,city\na,b\n", SIG)


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def test_v2_binary_bytes_and_ints() -> None:
    blob_city = _bytes_tensor(["Oslo", "Rome"])
    blob_age = np.array([3, 4], dtype="<i4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {"name": "city", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob_city)}},
                {
                    "name": "age",
                    "shape": [2, 1],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": len(blob_age)},
                },
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    p = parse_v2(head + blob_city + blob_age, str(len(head)), SIG)
    assert p.columns["city"].tolist() == ["Oslo", "Rome"] and p.columns["age"].tolist() == [3, 4]
    assert p.v2_binary_output
    with pytest.raises(InputError, match="binary_data_size 99 does not fit"):
        bad = head.replace(str(len(blob_age)).encode() + b"}}]", b"99}}]")
        parse_v2(bad + blob_city + blob_age, str(len(bad)), SIG)


def test_encode_v2_binary_roundtrip() -> None:
    body, hl = encode_v2("m", "1", [Tensor("predict", "FP64", np.array([1.5, 2.5]))], ["a-0", "a-1"], "rid", True)
    assert hl is not None
    head = json.loads(body[:hl])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 16
    assert np.frombuffer(body[hl:], dtype="<f8").tolist() == [1.5, 2.5]
    words = Tensor("predict", "BYTES", np.array(["x", "yy"], dtype=object))
    body, hl = encode_v2("m", "1", [words], ["a-0", "a-1"], None, True)
    assert body[hl:] == _bytes_tensor(["x", "yy"])


def test_classifier_outputs_by_label_type_and_per_output_binary() -> None:
    """predict has the label's datatype, probability/probabilities are FP64; each output is JSON or binary as
    asked (``binary_data`` per output, else the request's ``binary_data_output``)."""
    spec = spec_for("classification", "bool", [False, True])
    assert output_metadata(spec, True) == [
        {"name": "predict", "datatype": "BOOL", "shape": [-1]},
        {"name": "probability", "datatype": "FP64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]},
    ]
    assert output_metadata(LabelSpec("regression", "float"), False) == [
        {"name": "predict", "datatype": "FP64", "shape": [-1]}
    ]
    assert output_metadata(spec_for("classification", "int", [1, 2, 5]), True)[0]["datatype"] == "INT64"
    assert output_metadata(spec_for("classification", "str", ["a", "b"]), False)[0]["datatype"] == "BYTES"
    sig = Signature((Column("x", "double"),))
    request = {
        "inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}],
        "outputs": [{"name": "probabilities"}, {"name": "predict", "parameters": {"binary_data": True}}],
    }
    parsed = parse_v2(json.dumps(request).encode(), None, sig)
    wanted = select_outputs(parsed, output_names(spec, True))
    assert wanted == [("probabilities", False), ("predict", True)]
    proba = np.array([[0.8, 0.2], [0.3, 0.7]])
    labels = np.array([False, True])
    tensors = output_tensors(spec, labels, proba, proba[:, 1], "[false, true]", [n for n, _ in wanted])
    body, hl = encode_v2("m", "1", tensors, ["a-0", "a-1"], None, [b for _, b in wanted])
    assert hl is not None
    head = json.loads(body[:hl])
    probs, pred = head["outputs"]
    assert probs == {
        "name": "probabilities",
        "datatype": "FP64",
        "shape": [2, 2],
        "data": [0.8, 0.2, 0.3, 0.7],
        "parameters": {"classes": "[false, true]"},
    }
    assert pred["datatype"] == "BOOL" and pred["parameters"] == {"binary_data_size": 2}
    assert np.frombuffer(body[hl:], dtype=np.bool_).tolist() == [False, True]
    request["outputs"] = [{"name": "probability"}]
    with pytest.raises(InputError, match=r"unknown output 'probability'; this model's outputs are 'predict'$"):
        select_outputs(parse_v2(json.dumps(request).encode(), None, sig), output_names(REGRESSION, False))
    request["outputs"] = [{"name": "predict"}, {"name": "predict"}]
    with pytest.raises(InputError, match=r"outputs\[1\]: output 'predict' is requested twice"):
        parse_v2(json.dumps(request).encode(), None, sig)


REGRESSION = LabelSpec("regression", "float")


def test_hostile_values_are_4xx() -> None:
    sig = Signature((Column("x", "double"),))
    with pytest.raises(InputError, match="at row 0 is out of range for double"):
        parse_mlflow(b'{"inputs": {"x": [1' + b"0" * 400 + b"]}}", None, sig)
    deep = b"[" * 5000 + b"1.0" + b"]" * 5000
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": ' + deep + b"}]}"
    with pytest.raises(InputError):
        parse_v2(body, None, sig)
