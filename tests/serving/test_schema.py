"""Request values the model's column types cannot represent are refused with 422 naming column, row, value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loopline.serving.protocol_v2 import parse_v2
from loopline.serving.schema import Column, InputError, Signature, convert_column

LONG = Column("n", "long")
DOUBLE = Column("x", "double")
FLOAT = Column("f", "float")
INT = Column("i", "integer")


@pytest.mark.parametrize(
    ("col", "values", "message"),
    [
        (LONG, [1, 2**63 - 1], r"column 'n': 9223372036854775807 at row 1 is beyond \+-2\*\*53"),
        (LONG, [-(2**53) - 1], r"column 'n': -9007199254740993 at row 0 is beyond \+-2\*\*53"),
        (LONG, [2**64], r"column 'n': 18446744073709551616 at row 0 is out of range for long"),
        (LONG, [2.5], r"column 'n': 2.5 at row 0 is not an integer; expected long"),
        (LONG, [math.inf], r"column 'n': inf at row 0 is infinite; expected long"),
        (LONG, [math.nan], r"column 'n': NaN at row 0 is in an integer \(long\) column"),
        (LONG, [None], r"column 'n': null/NaN at row 0 is in an integer \(long\) column"),
        (INT, [2**31], r"column 'i': 2147483648 at row 0 is out of range for integer"),
        (DOUBLE, [1.0, -math.inf], r"column 'x': -inf at row 1 is infinite; expected a finite double"),
        (DOUBLE, [10**400], r"column 'x': 1000000000000000000000000000000000000... at row 0 is out of range"),
        (FLOAT, [1e39], r"column 'f': 1e\+39 at row 0 is out of range for float"),
    ],
)
def test_unrepresentable_values_are_422(col: Column, values: list[object], message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        convert_column(col, values)
    assert err.value.status == 422


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.array([1, 2**63 - 1], dtype=np.int64), r"9223372036854775807 at row 1 is beyond \+-2\*\*53"),
        (np.array([2**64 - 1], dtype=np.uint64), r"18446744073709551615 at row 0 is beyond \+-2\*\*53"),
        (np.array([1.0, 2.5]), r"2.5 at row 1 is not an integer"),
        (np.array([np.nan]), r"NaN at row 0 is in an integer"),
        (np.array([np.inf]), r"inf at row 0 is not an integer"),
    ],
)
def test_typed_arrays_are_checked_too(arr: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=r"column 'n': " + message) as err:
        convert_column(LONG, arr)
    assert err.value.status == 422


def test_v2_tensor_beyond_int64_is_422_naming_the_value() -> None:
    sig = Signature((LONG,))
    body = b'{"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [9223372036854775808]}]}'
    with pytest.raises(InputError, match=r"inputs\[0\] \('n'\): value 9223372036854775808 is out of range") as err:
        parse_v2(body, None, sig)
    assert err.value.status == 422
    exact = b'{"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [9007199254740992]}]}'
    assert parse_v2(exact, None, sig).columns["n"].tolist() == [2**53]


def test_representable_values_still_pass() -> None:
    assert convert_column(LONG, [2**53, -(2**53), 3.0]).tolist() == [2**53, -(2**53), 3]
    assert np.isnan(convert_column(DOUBLE, [None, 1.5])[0])  # NaN / null: a missing value in a float column
    assert convert_column(DOUBLE, [2**63]).tolist() == [float(2**63)]
