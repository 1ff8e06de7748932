"""Large inputs in bounded memory: batches of rows from a byte stream, and predictions
written back out as NDJSON, JSON or CSV, a batch at a time.

Row numbers in errors are 1-based over the whole input, so a client can find row
1,048,577 of a 2 GB upload."""

from __future__ import annotations

import ast
import io
import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np

from gateway import payload as payloads
from gateway.errors import GatewayError, MalformedRequestError, SchemaMismatchError
from model_runtime.codecs import output_rows

Batch = tuple[int, np.ndarray]  # (number of the batch's first row, rows)


def iter_batches(
    stream: BinaryIO, content_type: str, batch_rows: int, features: int | None
) -> Iterator[Batch]:
    kind = payloads.media_type(content_type)
    if kind == payloads.NPY:
        yield from _npy_batches(stream, batch_rows, features)
    elif kind == payloads.JSON:
        yield from _json_batches(stream.read(), batch_rows, features)
    else:
        yield from _line_batches(stream, kind, batch_rows, features)


def _check(matrix: np.ndarray, first_row: int, features: int | None) -> np.ndarray:
    if features is not None and matrix.shape[1] != features:
        raise SchemaMismatchError(
            f"Row {first_row} has {matrix.shape[1]} features; the model expects {features}.",
            row=first_row,
        )
    return matrix


def _rows_matrix(rows: list[list[float]], first_row: int, features: int | None) -> np.ndarray:
    width = features if features is not None else len(rows[0])
    for offset, row in enumerate(rows):
        if len(row) != width:
            number = first_row + offset
            raise SchemaMismatchError(
                f"Row {number} has {len(row)} features; the model expects {width}.", row=number
            )
    return np.asarray(rows, dtype=np.float32)


def _line_batches(
    stream: BinaryIO, kind: str, batch_rows: int, features: int | None
) -> Iterator[Batch]:
    pending: list[bytes] = []
    numbers: list[int] = []  # the input line number of each pending row
    number = 0
    for raw in _lines(stream):
        number += 1
        if not raw.strip():
            continue
        pending.append(raw)
        numbers.append(number)
        if len(pending) >= batch_rows:
            yield numbers[0], _decode_lines(pending, kind, numbers, features)
            pending, numbers = [], []
    if pending:
        yield numbers[0], _decode_lines(pending, kind, numbers, features)


def _lines(stream: BinaryIO, chunk: int = 1 << 20) -> Iterator[bytes]:
    tail = b""
    while True:
        block = stream.read(chunk)
        if not block:
            break
        block = tail + block
        lines = block.split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail


def _decode_lines(
    lines: list[bytes], kind: str, numbers: list[int], features: int | None
) -> np.ndarray:
    fast = _fast_matrix(lines, kind, features)
    if fast is not None:
        return fast
    return _precise_matrix(lines, kind, numbers, features)


def _fast_matrix(lines: list[bytes], kind: str, features: int | None) -> np.ndarray | None:
    """The whole batch at C speed: one json.loads or one numpy conversion, checked as an
    array. ``None`` when anything is off, and the precise parser finds and names it."""
    try:
        if kind == payloads.CSV:
            widths = {line.count(b",") for line in lines}
            if len(widths) != 1:
                return None
            flat = np.array(b",".join(lines).split(b","), dtype=np.float32)
            matrix = flat.reshape(len(lines), widths.pop() + 1)
        else:
            joined = b",".join(lines)
            # Objects ({"inputs": ...}), strings, booleans and nulls would be coerced or
            # lose their row number here: the precise parser handles and names them.
            if any(token in joined for token in (b"{", b'"', b"true", b"false", b"null")):
                return None
            matrix = np.array(json.loads(b"[" + joined + b"]"), dtype=np.float32)
    except (ValueError, TypeError, RecursionError):
        return None
    if matrix.ndim != 2 or (features is not None and matrix.shape[1] != features):
        return None
    if not np.isfinite(matrix).all():
        return None
    return matrix


def _precise_matrix(
    lines: list[bytes], kind: str, numbers: list[int], features: int | None
) -> np.ndarray:
    """Parse with the gateway's own parser, renumbering errors to the whole input."""
    try:
        decoded = payloads.decode(b"\n".join(lines), kind)
        assert decoded.rows is not None
        width = features if features is not None else len(decoded.rows[0])
        for index, values in enumerate(decoded.rows, start=1):
            if len(values) != width:
                raise SchemaMismatchError(
                    f"Row {index} has {len(values)} features; the model expects {width}.",
                    row=index,
                )
    except GatewayError as exc:
        where = exc.extensions.get("row")
        if isinstance(where, int) and 1 <= where <= len(numbers):
            number = numbers[where - 1]
            detail = exc.detail
            for word in ("Row", "Line"):
                detail = detail.replace(f"{word} {where}", f"Row {number}", 1)
            raise type(exc)(detail, **{**exc.extensions, "row": number}) from None
        raise
    return np.asarray(decoded.rows, dtype=np.float32)


def _json_batches(body: bytes, batch_rows: int, features: int | None) -> Iterator[Batch]:
    decoded = payloads.decode(body, payloads.JSON)
    if decoded.rows is None:
        raise SchemaMismatchError("Send rows, not a tensor of higher rank.")
    matrix = _rows_matrix(decoded.rows, 1, features)
    for start in range(0, len(matrix), batch_rows):
        yield start + 1, matrix[start : start + batch_rows]


def _npy_batches(stream: BinaryIO, batch_rows: int, features: int | None) -> Iterator[Batch]:
    head = stream.read(10)
    if len(head) < 10 or not head.startswith(b"\x93NUMPY"):
        raise MalformedRequestError("The input is not an .npy file (bad magic).")
    if head[6] == 1:
        (length,) = struct.unpack("<H", head[8:10])
        header_bytes = stream.read(length)
    else:
        more = stream.read(2)
        (length,) = struct.unpack("<I", head[8:10] + more)
        header_bytes = stream.read(length)
    try:
        header = ast.literal_eval(header_bytes.decode("latin1"))
        dtype = np.dtype(header["descr"])
        shape = tuple(header["shape"])
        fortran = header["fortran_order"]
    except Exception:
        raise MalformedRequestError("The .npy header cannot be read.") from None
    if fortran or dtype.kind not in "fiu" or len(shape) not in (1, 2):
        raise SchemaMismatchError(f"Unsupported .npy layout: dtype {dtype}, shape {shape}.")
    rows, width = (1, shape[0]) if len(shape) == 1 else shape
    _check(np.zeros((0, width)), 1, features)
    row_bytes = width * dtype.itemsize
    for start in range(0, rows, batch_rows):
        count = min(batch_rows, rows - start)
        data = stream.read(count * row_bytes)
        if len(data) != count * row_bytes:
            raise MalformedRequestError(f"The .npy data ends early, at row {start + 1}.")
        matrix = np.frombuffer(data, dtype=dtype).reshape(count, width).astype(np.float32)
        if not np.isfinite(matrix).all():
            bad = int(np.argwhere(~np.isfinite(matrix))[0][0]) + start + 1
            raise SchemaMismatchError(f"Row {bad} contains NaN or infinity.", row=bad)
        yield start + 1, matrix


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


class OutputWriter:
    """Predictions to bytes, a batch at a time, in the job's output format."""

    def __init__(self, accept: str) -> None:
        base = (accept or "application/x-ndjson").split(";")[0].strip().lower()
        self.content_type = {
            "application/json": "application/json",
            "text/csv": "text/csv",
        }.get(base, "application/x-ndjson")
        self._first = True

    def batch(self, outputs: dict[str, np.ndarray]) -> bytes:
        if self.content_type == "application/x-ndjson":
            return _ndjson(outputs)
        rows = output_rows(outputs)
        if self.content_type == "text/csv":
            return self._csv(rows)
        if self.content_type == "application/json":
            prefix = b'{"predictions":[' if self._first else b","
            self._first = False
            return prefix + b",".join(_dumps(r) for r in rows)
        return _ndjson(outputs)

    def end(self) -> bytes:
        if self.content_type == "application/json":
            return (b'{"predictions":[' if self._first else b"") + b"]}"
        return b""

    def _csv(self, rows: Iterable[dict[str, Any]]) -> bytes:
        out = io.StringIO()
        for row in rows:
            cells: list[str] = []
            for value in row.values():
                cells.extend(str(v) for v in (value if isinstance(value, list) else [value]))
            out.write(",".join(cells) + "\n")
        return out.getvalue().encode()


def _ndjson(outputs: dict[str, np.ndarray]) -> bytes:
    """One JSON object per row, with one encoder call per output column rather than one per
    row: the column's text is split into its rows (numbers only, so the split is exact)."""
    columns: list[list[str]] = []
    for value in outputs.values():
        if value.ndim == 1:
            columns.append(_ENCODE(value.tolist())[1:-1].split(","))
        elif value.ndim == 2 and value.shape[1] > 0:
            text = _ENCODE(value.tolist())
            columns.append(["[" + cell + "]" for cell in text[2:-2].split("],[")])
        else:
            columns.append([_ENCODE(row) for row in value.tolist()])
    keys = [_ENCODE(name) + ":" for name in outputs]
    lines = [
        "{" + ",".join(k + c for k, c in zip(keys, row, strict=True)) + "}"
        for row in zip(*columns, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _dumps(row: dict[str, Any]) -> bytes:
    return json.dumps(row, separators=(",", ":")).encode()
