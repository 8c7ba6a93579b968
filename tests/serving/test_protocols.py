"""Protocol parsing and encoding without a server (string columns, V2 binary BYTES, edge cases)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from loopline.serving.protocols import encode_v2, parse_csv, parse_mlflow, parse_v2
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
    body, hl = encode_v2("m", "1", np.array([1.5, 2.5]), ["a-0", "a-1"], "rid", True)
    assert hl is not None
    head = json.loads(body[:hl])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 16
    assert np.frombuffer(body[hl:], dtype="<f8").tolist() == [1.5, 2.5]
    body, hl = encode_v2("m", "1", np.array(["x", "yy"], dtype=object), ["a-0", "a-1"], None, True)
    assert body[hl:] == _bytes_tensor(["x", "yy"])


def test_hostile_values_are_4xx() -> None:
    sig = Signature((Column("x", "double"),))
    with pytest.raises(InputError, match="too large for double"):
        parse_mlflow(b'{"inputs": {"x": [1' + b"0" * 400 + b"]}}", None, sig)
    deep = b"[" * 5000 + b"1.0" + b"]" * 5000
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": ' + deep + b"}]}"
    with pytest.raises(InputError):
        parse_v2(body, None, sig)
