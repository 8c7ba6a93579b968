"""Request/response shapes for the OpenAPI document.

Predict endpoints read their body by hand (size limit first, then the protocol parser), so their
request bodies are described here as JSON Schema and attached with ``openapi_extra``; responses
use the pydantic models below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

_ROW = {"type": "array", "items": {}, "description": "One row: values in column order."}
_RECORD = {"type": "object", "additionalProperties": True, "description": "One row: {column: value}."}
_COLUMNS = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": {}},
    "description": "Columnar: {column: [values]}.",
}
_PARAMS = {"type": "object", "additionalProperties": True, "description": "Optional model params."}
_ROWS_OR_COLUMNS = {"oneOf": [{"type": "array", "items": {"oneOf": [_RECORD, _ROW]}}, _COLUMNS]}

INVOCATIONS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The MLflow scoring protocol: JSON with exactly one of dataframe_split, dataframe_records, "
        "instances or inputs (+ optional params), or CSV with a header line. Columns are checked "
        "against the model signature before predict.",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "title": "dataframe_split",
                            "required": ["dataframe_split"],
                            "additionalProperties": False,
                            "properties": {
                                "dataframe_split": {
                                    "type": "object",
                                    "required": ["data"],
                                    "properties": {
                                        "columns": {"type": "array", "items": {"type": "string"}},
                                        "data": {"type": "array", "items": _ROW},
                                        "index": {"type": "array", "items": {}},
                                    },
                                },
                                "params": _PARAMS,
                            },
                        },
                        {
                            "type": "object",
                            "title": "dataframe_records",
                            "required": ["dataframe_records"],
                            "additionalProperties": False,
                            "properties": {"dataframe_records": {"type": "array", "items": _RECORD}, "params": _PARAMS},
                        },
                        {
                            "type": "object",
                            "title": "instances",
                            "required": ["instances"],
                            "additionalProperties": False,
                            "properties": {"instances": _ROWS_OR_COLUMNS, "params": _PARAMS},
                        },
                        {
                            "type": "object",
                            "title": "inputs",
                            "required": ["inputs"],
                            "additionalProperties": False,
                            "properties": {"inputs": _ROWS_OR_COLUMNS, "params": _PARAMS},
                        },
                    ]
                },
                "example": {"dataframe_split": {"columns": ["x"], "data": [[1.5]]}},
            },
            "text/csv": {"schema": {"type": "string"}, "example": "x\n1.5\n"},
        },
    }
}

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "description": "A model column, or any name for one [N, n_columns] tensor."},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {
            "type": "string",
            "enum": [
                "BOOL",
                "UINT8",
                "UINT16",
                "UINT32",
                "UINT64",
                "INT8",
                "INT16",
                "INT32",
                "INT64",
                "FP16",
                "FP32",
                "FP64",
                "BYTES",
            ],
        },
        "parameters": {
            "type": "object",
            "additionalProperties": True,
            "description": "binary_data_size (binary tensor data extension).",
        },
        "data": {"type": "array", "items": {}, "description": "Row-major values (flat or nested)."},
    },
}
V2_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Open Inference Protocol V2 inference request. With the binary tensor data extension, "
        "the JSON header is followed by raw tensor bytes and its length is in the "
        "Inference-Header-Content-Length header.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object", "additionalProperties": True},
                        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {
                                        "type": "string",
                                        "enum": ["predict", "probability", "probabilities"],
                                        "description": "probability and probabilities: classifiers only.",
                                    },
                                    "parameters": {"type": "object", "additionalProperties": True},
                                },
                            },
                        },
                    },
                },
                "example": {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.5]}]},
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class MlflowErrorBody(BaseModel):
    error_code: str = Field(description="BAD_REQUEST, INVALID_PARAMETER_VALUE, UNAUTHENTICATED, ...")
    message: str = Field(description="What is wrong, naming the column or field.")


class ErrorBody(BaseModel):
    error: str = Field(description="What is wrong, naming the column or field.")


class InvocationsResponse(BaseModel):
    predictions: list[StrictBool | StrictInt | StrictFloat | StrictStr | None] = Field(
        description="One prediction per input row: a number (regression), else the predicted class in the "
        "target's own JSON type (integer, boolean or string)."
    )
    probability: list[float | None] | None = Field(
        None,
        description="Classifiers with probabilities: per row, P(positive class) for a binary model, else "
        "P(predicted class).",
    )
    classes: list[StrictBool | StrictInt | StrictFloat | StrictStr] | None = Field(
        None, description="Classifiers with probabilities: the classes, in the column order of `probabilities`."
    )
    probabilities: list[list[float | None]] | None = Field(
        None, description="Classifiers with probabilities: per row, the probability of each class in `classes`."
    )
    request_ids: list[str] = Field(description="loopline's id per row (use it in /feedback).")
    model_version: str = Field(description="The registered model version that predicted.")


class V2Output(BaseModel):
    name: str = Field(
        description="predict (the labels: INT64, BOOL or BYTES by the target's type, FP64 for regression); "
        "classifiers also probability (FP64 [N]) and probabilities (FP64 [N, n_classes])."
    )
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = Field(
        None,
        description="binary_data_size (binary tensor data extension); probabilities: classes, the class of "
        "each column as a JSON list.",
    )


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="request_ids: comma-separated ids per row.")
    outputs: list[V2Output]


class V2TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMeta]
    outputs: list[V2TensorMeta]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    model: str | None = None
    version: str | None = None
    error: str | None = None


class ReloadResult(BaseModel):
    result: str = Field(description="swapped, unchanged, failed, no_champion, refused_before, registry_error")
    version: str | None = None
    error: str | None = None


KeyValue = StrictStr | StrictInt | StrictFloat | StrictBool | None


class FeedbackItem(BaseModel):
    """One label: for a served prediction (request_id) or for a row identified by model.keys."""

    model_config = ConfigDict(extra="forbid")

    request_id: StrictStr | None = Field(None, max_length=256, description="A request id returned by a predict call.")
    keys: dict[str, KeyValue] | None = Field(None, description="model.keys columns identifying the row.")
    label: StrictBool | StrictInt | StrictFloat | StrictStr = Field(
        description="The observed outcome, parsed to the model's label type: a number (regression); one of the "
        'model\'s classes (classification): 1, 1.0 or "1" for an integer target, true, "true", 1 or 0 for a '
        "boolean target, text for a text target. Values are not coerced by the schema: true stays a boolean."
    )
    received_at: datetime | None = Field(None, description="When the label was observed (default: now, UTC).")


class FeedbackResponse(BaseModel):
    status: str = Field(description="ok: the rows are committed to the feedback table.")
    accepted: int
    unknown_request_ids: list[str] = Field(description="Ids not found in inference_log nor the log buffer (accepted).")
    table_version: int


FEEDBACK_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One feedback item or a list of them; each needs request_id or keys.",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/FeedbackItem"},
                        {"type": "array", "items": {"$ref": "#/components/schemas/FeedbackItem"}, "minItems": 1},
                    ]
                },
                "example": {"request_id": "3f2a...-0", "label": 12.5},
            }
        },
    }
}


def _errors(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": model} for s in statuses}


# the error statuses each router documents
ERRS = _errors(ErrorBody, 400, 401, 403, 404, 413, 415, 422, 503)
FEEDBACK_ERRS = _errors(ErrorBody, 400, 401, 403, 409, 413, 422, 503)
MLFLOW_ERRS = _errors(MlflowErrorBody, 400, 401, 403, 413, 415, 422, 503)
