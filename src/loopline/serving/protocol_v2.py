"""The Open Inference Protocol V2 (KServe / Triton) wire format.

``POST /v2/models/{name}/infer``: ``{"inputs": [{"name", "shape", "datatype", "data"}]}``, one input per
model column (shape ``[N]`` or ``[N, 1]``) or one ``[N, n_columns]`` tensor in signature order; the binary
tensor data extension (``Inference-Header-Content-Length``) is supported both ways, as Triton's clients use
it by default. Outputs: ``predict`` (the labels in their own datatype: INT64, BOOL, BYTES or FP64;
regression FP64) and for classifiers with probabilities ``probability`` (FP64 [N]) and ``probabilities``
(FP64 [N, n_classes], parameter ``classes``: the classes of its columns as a JSON list);
``outputs: [{"name"}]`` selects some of them. Parsing gives a :class:`~loopline.serving.protocols.Parsed`
as the MLflow scoring protocol does; nothing here touches the model or the network.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from loopline.serving.errors import InputError, Unprocessable
from loopline.serving.protocols import Parsed, encode_predictions, load_json
from loopline.serving.schema import Column, Signature, convert_column

if TYPE_CHECKING:
    from loopline.labels import LabelSpec

V2_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": object,
}
KIND_TO_V2 = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
    "datetime": "BYTES",
    "any": "BYTES",
}


def v2_datatype(arr: np.ndarray) -> str:
    k = arr.dtype.kind
    if k == "b":
        return "BOOL"
    if k in "iuf":
        name = {"i": "INT", "u": "UINT", "f": "FP"}[k]
        return f"{name}{arr.dtype.itemsize * 8}"
    return "BYTES"


def parse_v2(body: bytes, header_length: str | None, sig: Signature, keys: tuple[str, ...] = ()) -> Parsed:
    binary = b""
    if header_length is not None:
        try:
            hl = int(header_length)
        except ValueError:
            raise InputError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 <= hl <= len(body):
            raise InputError(f"Inference-Header-Content-Length {hl} is outside the body ({len(body)} bytes)")
        body, binary = body[:hl], body[hl:]
    if not body.strip():
        raise InputError('empty request body; send {"inputs": [{"name", "shape", "datatype", "data"}]}')
    obj = load_json(body)
    if not isinstance(obj, dict):
        raise InputError("the inference request must be a JSON object")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError("inputs: a non-empty list of tensors is required")
    params = obj.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InputError("parameters must be an object")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InputError("id must be a string")
    binary_out = bool((params or {}).get("binary_data_output", False))
    wanted = _requested_outputs(obj.get("outputs"))
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(inputs):
        name, arr, offset = _v2_tensor(i, t, binary, offset)
        if name in tensors:
            raise InputError(f"inputs[{i}]: duplicate input name {name!r}")
        tensors[name] = arr
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    parsed = _v2_columns(tensors, sig, keys)
    parsed.v2_id = rid
    parsed.v2_binary_output = binary_out
    parsed.v2_outputs = wanted
    mlflow_params = (params or {}).get("mlflow_params")
    parsed.params = mlflow_params if isinstance(mlflow_params, dict) else None
    return parsed


def _requested_outputs(outputs: Any) -> list[tuple[str, bool | None]] | None:
    """``outputs: [{"name", "parameters": {"binary_data"}}]`` as (name, binary or None); names are checked
    against the model's outputs by :func:`select_outputs`."""
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise InputError("outputs must be a list of {name}")
    wanted: list[tuple[str, bool | None]] = []
    for i, o in enumerate(outputs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise InputError(f"outputs[{i}] must be an object with a name")
        name = o["name"]
        if any(name == w for w, _ in wanted):
            raise InputError(f"outputs[{i}]: output {name!r} is requested twice")
        op = o.get("parameters")
        if op is not None and not isinstance(op, dict):
            raise InputError(f"outputs[{i}] ({name!r}): parameters must be an object")
        flag = (op or {}).get("binary_data")
        wanted.append((name, flag if isinstance(flag, bool) else None))
    return wanted


def _v2_tensor(i: int, t: Any, binary: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(t, dict):
        raise InputError(f"inputs[{i}] must be an object with name, shape, datatype, data")
    name, shape, dtype = t.get("name"), t.get("shape"), t.get("datatype")
    where = f"inputs[{i}]" + (f" ({name!r})" if isinstance(name, str) else "")
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: name must be a non-empty string")
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f"{where}: shape must be a non-empty list of non-negative integers")
    if dtype not in V2_DTYPES:
        raise InputError(f"{where}: datatype must be one of {', '.join(V2_DTYPES)}, got {dtype!r}")
    count = math.prod(shape)
    if count > 10_000_000:
        raise InputError(f"{where}: shape {shape} is too large")
    tparams = t.get("parameters") or {}
    if not isinstance(tparams, dict):
        raise InputError(f"{where}: parameters must be an object")
    size = tparams.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise InputError(f"{where}: binary_data_size {size!r} does not fit the binary data")
        chunk = binary[offset : offset + size]
        offset += size
        arr = _from_binary(where, chunk, dtype, count)
    else:
        if "data" not in t:
            raise InputError(f"{where}: data is required (or parameters.binary_data_size)")
        arr = _from_json(where, t["data"], dtype, count)
    return name, arr.reshape(shape), offset


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        if any(isinstance(x, list) for x in data):
            raise InputError("data nests lists unevenly")
        return data
    out: list[Any] = []
    for x in data:
        out.extend(_flatten(x))
    return out


def _from_json(where: str, data: Any, dtype: str, count: int) -> np.ndarray:
    try:
        flat = _flatten(data)
    except InputError as exc:
        raise InputError(f"{where}: {exc.message}") from None
    except RecursionError:
        raise InputError(f"{where}: data is nested too deeply") from None
    if len(flat) != count:
        raise InputError(f"{where}: data has {len(flat)} values, shape says {count}")
    if dtype == "BOOL":
        ok = all(type(v) is bool for v in flat)
    elif dtype.startswith(("INT", "UINT")):
        ok = all(type(v) is int for v in flat)
    elif dtype.startswith("FP"):
        ok = all(type(v) in (int, float) for v in flat)
    else:
        ok = all(isinstance(v, str) for v in flat)
    if not ok:
        bad = next(v for v in flat if not _fits(v, dtype))
        raise InputError(f"{where}: value {bad!r} does not match datatype {dtype}")
    if dtype == "BYTES":
        return np.array(flat, dtype=object)
    try:
        return np.array(flat, dtype=V2_DTYPES[dtype])
    except (OverflowError, ValueError):
        info = np.iinfo(V2_DTYPES[dtype]) if dtype.startswith(("INT", "UINT")) else None
        bad = next((v for v in flat if info is not None and not info.min <= v <= info.max), None)
        shown = "a value" if bad is None else f"value {bad!r}"
        raise Unprocessable(f"{where}: {shown} is out of range for {dtype}") from None


def _fits(v: Any, dtype: str) -> bool:
    if dtype == "BOOL":
        return type(v) is bool
    if dtype.startswith(("INT", "UINT")):
        return type(v) is int
    if dtype.startswith("FP"):
        return type(v) in (int, float)
    return isinstance(v, str)


def _from_binary(where: str, chunk: bytes, dtype: str, count: int) -> np.ndarray:
    if dtype == "BYTES":
        items: list[str] = []
        pos = 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise InputError(f"{where}: truncated BYTES element")
            (ln,) = struct.unpack_from("<I", chunk, pos)
            pos += 4
            if pos + ln > len(chunk):
                raise InputError(f"{where}: truncated BYTES element")
            try:
                items.append(chunk[pos : pos + ln].decode())
            except UnicodeDecodeError:
                raise InputError(f"{where}: BYTES element is not UTF-8") from None
            pos += ln
        if len(items) != count:
            raise InputError(f"{where}: binary data has {len(items)} elements, shape says {count}")
        return np.array(items, dtype=object)
    np_dtype = np.dtype(V2_DTYPES[dtype])
    if len(chunk) != count * np_dtype.itemsize:
        need = count * np_dtype.itemsize
        raise InputError(f"{where}: binary data has {len(chunk)} bytes, shape and {dtype} need {need}")
    return np.frombuffer(chunk, dtype=np_dtype.newbyteorder("<")).astype(np_dtype)


def _v2_columns(tensors: dict[str, np.ndarray], sig: Signature, keys: tuple[str, ...]) -> Parsed:
    names = set(sig.names)
    passthrough: dict[str, list[Any]] = {}
    if not sig.columns:
        raw = {}
        n = -1
        for name, arr in tensors.items():
            col = _as_column(name, arr)
            if n not in (-1, len(col)):
                raise InputError(f"input {name!r} has {len(col)} rows, other inputs have {n}")
            n = len(col)
            raw[name] = col.tolist()
        if n <= 0:
            raise InputError("the payload has no rows; send at least one")
        return Parsed({}, n, raw_frame=raw)
    by_column = [t for t in tensors if t in names]
    if by_column:
        cols: dict[str, np.ndarray] = {}
        n = -1
        for name, arr in tensors.items():
            if name not in names and name not in keys:
                raise InputError(
                    f"input {name!r} is not a model column; send one input per column ({', '.join(sig.names)})"
                )
            col = _as_column(name, arr)
            if n not in (-1, len(col)):
                raise InputError(f"input {name!r} has {len(col)} rows, other inputs have {n}")
            n = len(col)
            if name in names:
                cols[name] = col
            else:
                passthrough[name] = col.tolist()
        n = max(n, 0)
    elif len(tensors) == 1:
        name, arr = next(iter(tensors.items()))
        width = len(sig.columns)
        if arr.ndim != 2 or arr.shape[1] != width:
            raise InputError(
                f"input {name!r} has shape {list(arr.shape)}; send one input per column "
                f"({', '.join(sig.names)}) or one [N, {width}] tensor in that order"
            )
        cols = {c.name: _matrix_column(c, arr[:, j]) for j, c in enumerate(sig.columns)}
        n = arr.shape[0]
    else:
        raise InputError(f"inputs {list(tensors)} are not model columns; the model needs: {', '.join(sig.names)}")
    if n == 0:
        raise InputError("the payload has no rows; send at least one")
    typed: dict[str, np.ndarray] = {}
    for c in sig.columns:
        if c.name not in cols:
            if c.required:
                raise InputError(f"missing input {c.name!r}; the model needs: {', '.join(sig.names)}")
            continue
        typed[c.name] = _typed(c, cols[c.name])
    return Parsed(typed, n, None, passthrough)


def _matrix_column(c: Column, col: np.ndarray) -> np.ndarray:
    """A column cut from one [N, k] numeric tensor: booleans arrive as 0/1."""
    if c.kind == "boolean" and col.dtype.kind in "iuf":
        if not np.isin(col, (0, 1)).all():
            raise InputError(f"column {c.name!r}: boolean values in a numeric tensor must be 0 or 1")
        return col.astype(np.bool_)
    return col


def _typed(c: Column, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == object:
        return convert_column(c, arr.tolist())
    return convert_column(c, arr)


def _as_column(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 1:
        return arr
    if arr.ndim == 2 and arr.shape[1] == 1:
        return arr[:, 0]
    raise InputError(f"input {name!r} has shape {list(arr.shape)}; a column input must be [N] or [N, 1]")


# ----------------------------------------------------------------------------- V2 outputs
PREDICT, PROBABILITY, PROBABILITIES = "predict", "probability", "probabilities"
LABEL_TO_V2 = {"int": "INT64", "bool": "BOOL", "str": "BYTES", "float": "FP64"}


def label_datatype(spec: LabelSpec) -> str:
    """The V2 datatype of the ``predict`` output: the label's own type (regression: FP64)."""
    return LABEL_TO_V2[spec.kind] if spec.is_classifier else "FP64"


def output_names(spec: LabelSpec, with_proba: bool) -> tuple[str, ...]:
    return (PREDICT, PROBABILITY, PROBABILITIES) if spec.is_classifier and with_proba else (PREDICT,)


def output_metadata(spec: LabelSpec, with_proba: bool) -> list[dict[str, Any]]:
    """The model's outputs for V2 model metadata: the same names, datatypes and shapes as responses."""
    out: list[dict[str, Any]] = [{"name": PREDICT, "datatype": label_datatype(spec), "shape": [-1]}]
    if PROBABILITY in output_names(spec, with_proba):
        out.append({"name": PROBABILITY, "datatype": "FP64", "shape": [-1]})
        out.append({"name": PROBABILITIES, "datatype": "FP64", "shape": [-1, len(spec.classes)]})
    return out


def select_outputs(parsed: Parsed, names: tuple[str, ...]) -> list[tuple[str, bool]]:
    """The outputs a V2 request asked for (all by default), each with whether it is sent as binary data;
    an unknown name is a 400 naming the model's outputs."""
    default = parsed.v2_binary_output
    if parsed.v2_outputs is None:
        return [(n, default) for n in names]
    out = []
    for name, binary in parsed.v2_outputs:
        if name not in names:
            raise InputError(f"unknown output {name!r}; this model's outputs are {', '.join(map(repr, names))}")
        out.append((name, default if binary is None else binary))
    return out


@dataclass(frozen=True)
class Tensor:
    """One V2 output tensor."""

    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] | None = None


def output_tensors(
    spec: LabelSpec,
    labels: np.ndarray,
    proba: np.ndarray | None,
    probability: np.ndarray | None,
    classes_json: str,
    names: list[str],
) -> list[Tensor]:
    """The requested outputs of one prediction, in the datatypes :func:`output_metadata` announces."""
    out: list[Tensor] = []
    for name in names:
        if name == PREDICT:
            dt = label_datatype(spec)
            data = labels if dt == "BYTES" else np.asarray(labels, dtype=V2_DTYPES[dt])
            out.append(Tensor(PREDICT, dt, data))
        elif name == PROBABILITY and probability is not None:
            out.append(Tensor(PROBABILITY, "FP64", probability))
        elif name == PROBABILITIES and proba is not None:
            # V2 parameter values are scalars: the class of each column as one JSON list
            out.append(Tensor(PROBABILITIES, "FP64", proba, {"classes": classes_json}))
    return out


def _blob(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        parts = []
        for v in t.data.reshape(-1).tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    arr = np.ascontiguousarray(t.data)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _json_data(t: Tensor) -> list[Any]:
    flat = t.data.reshape(-1)
    if t.datatype == "BYTES":
        return [v if isinstance(v, str) else str(v) for v in flat.tolist()]
    return encode_predictions(flat)


def encode_v2(
    model_name: str,
    version: str,
    tensors: list[Tensor],
    request_ids: list[str],
    rid: str | None,
    binary: list[bool] | bool = False,
) -> tuple[bytes, int | None]:
    """The infer response body, and the JSON header length when any output is sent as binary data
    (``binary``: per tensor, or one flag for all)."""
    flags = [binary] * len(tensors) if isinstance(binary, bool) else binary
    resp: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if rid is not None:
        resp["id"] = rid
    resp["parameters"] = {"request_ids": ",".join(request_ids)}  # V2 parameter values are scalars
    blobs: list[bytes] = []
    outputs = []
    for t, as_binary in zip(tensors, flags, strict=True):
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.data.shape)}
        params = dict(t.parameters or {})
        if as_binary:
            blob = _blob(t)
            blobs.append(blob)
            params["binary_data_size"] = len(blob)
        else:
            out["data"] = _json_data(t)
        if params:
            out["parameters"] = params
        outputs.append(out)
    resp["outputs"] = outputs
    head = json.dumps(resp, separators=(",", ":")).encode()
    if blobs:
        return head + b"".join(blobs), len(head)
    return head, None
