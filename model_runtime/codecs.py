"""Payload bytes to tensors and outputs to bytes. Parsing rules live in ``gateway.payload``
(one parser for gateway and model runtime); this module only adds numpy."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson

from gateway import payload as payloads
from gateway.errors import MalformedRequestError, SchemaMismatchError


def to_matrix(body: bytes, content_type: str | None) -> np.ndarray:
    decoded = payloads.decode(body, content_type)
    if decoded.rows is None:  # .npy: the header was validated, numpy reads the data
        try:
            array = np.load(io.BytesIO(body), allow_pickle=False)
        except ValueError as exc:
            raise MalformedRequestError(f"The .npy body cannot be read: {exc}.") from None
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if not np.isfinite(array).all():
            raise SchemaMismatchError("The .npy tensor contains NaN or infinite values.")
        return np.ascontiguousarray(array, dtype=np.float32)
    widths = {len(row) for row in decoded.rows}
    if len(widths) != 1:
        first = len(decoded.rows[0])
        row = next(i for i, r in enumerate(decoded.rows, start=1) if len(r) != first)
        raise SchemaMismatchError(
            f"Row {row} has {len(decoded.rows[row - 1])} features; row 1 has {first}.", row=row
        )
    return np.asarray(decoded.rows, dtype=np.float32)


def output_rows(outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Row-oriented predictions: ``[{"label": 3, "probabilities": [...]}, ...]``."""
    columns = {name: value.tolist() for name, value in outputs.items()}
    count = len(next(iter(columns.values()))) if columns else 0
    return [{name: column[i] for name, column in columns.items()} for i in range(count)]


# orjson writes what json.dumps would with compact separators, ~7x faster: on a one-row
# answer, a tenth of the model server's CPU time. Floats stay the float64 of each float32
# (tolist), as before, in the same shortest digits (exponents as e-6, not e-06); non-finite
# outputs become null, not JSON's invalid NaN.
def encode_json(outputs: dict[str, np.ndarray], *, model: str, version: str) -> bytes:
    return orjson.dumps({"model": model, "version": version, "predictions": output_rows(outputs)})


_OIP_TYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


def encode_oip(outputs: dict[str, np.ndarray], *, model: str, version: str) -> bytes:
    return orjson.dumps(
        {
            "model_name": model,
            "model_version": version,
            "outputs": [
                {
                    "name": name,
                    "shape": list(value.shape),
                    "datatype": _OIP_TYPES.get(str(value.dtype), "BYTES"),
                    "data": value.ravel().tolist(),
                }
                for name, value in outputs.items()
            ],
        }
    )
