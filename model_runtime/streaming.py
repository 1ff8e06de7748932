"""Large inputs in bounded memory: batches of rows from a byte stream, and predictions
written back out as NDJSON, JSON, CSV or .npy, a batch at a time.

Row numbers in errors are 1-based over the whole input, so a client can find row
1,048,577 of a 2 GB upload.

The .npy path is binary end to end: each read from the stream (about a MiB, a whole number
of batches) is viewed in place by numpy - no parsing, no copy when the file is float32 - and
each batch's output tensor is written as its raw bytes behind one .npy header."""

from __future__ import annotations

import ast
import io
import struct
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import orjson

from gateway import payload as payloads
from gateway.errors import (
    GatewayError,
    MalformedRequestError,
    SchemaMismatchError,
    UnsupportedMediaTypeError,
)
from model_runtime.codecs import output_rows
from model_runtime.read_ahead import ReadAhead

Batch = tuple[int, np.ndarray]  # (number of the batch's first row, rows)

NDJSON = payloads.NDJSON
JSON = payloads.JSON
CSV = payloads.CSV
NPY = payloads.NPY
# What a job's ``accept`` may name; anything else (or a wildcard) gets NDJSON.
OUTPUT_TYPES = (NDJSON, JSON, CSV, NPY)


@dataclass
class Batches:
    """The batches of one input, and its row count when the input states it up front (an
    .npy header does; text formats do not).

    Iterating reads the stream in the caller's thread. ``read_ahead`` reads it in a thread of
    its own while the caller runs the model (see model_runtime.read_ahead): what a worker
    does. Either way a read gives whole batches - about a MiB of .npy, or one batch of
    parsed text - and batches are views of it."""

    rows: int | None
    _reads: Iterator[Batch]  # (number of the first row, the rows of one or more batches)
    _batch_rows: int

    def __iter__(self) -> Iterator[Batch]:
        return _split(self._reads, self._batch_rows)

    @contextmanager
    def read_ahead(self, depth: int = 2) -> Iterator[Iterator[Batch]]:
        """The batches, read up to ``depth`` reads ahead of the caller (0: in line, as
        iterating does). The stream may be closed once the block is left: the reading
        thread has ended by then."""
        if depth == 0:
            yield iter(self)
            return
        with ReadAhead(self._reads, depth) as reads:
            yield _split(reads, self._batch_rows)


def read_batches(
    stream: BinaryIO, content_type: str, batch_rows: int, features: int | None
) -> Batches:
    """Batches of ``stream``. An .npy header is read and checked here, at once; text is
    read and parsed batch by batch as the batches are taken."""
    kind = payloads.media_type(content_type)
    if kind == NPY:
        dtype, rows, width = _npy_header(stream, features)
        return Batches(rows, _npy_reads(stream, dtype, rows, width, batch_rows), batch_rows)
    if kind == JSON:
        return Batches(None, _json_reads(stream, features), batch_rows)
    return Batches(None, _line_batches(stream, kind, batch_rows, features), batch_rows)


def _split(reads: Iterable[Batch], batch_rows: int) -> Iterator[Batch]:
    for first, matrix in reads:
        for offset in range(0, len(matrix), batch_rows):
            yield first + offset, matrix[offset : offset + batch_rows]


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
            matrix = np.array(orjson.loads(b"[" + joined + b"]"), dtype=np.float32)
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


def _json_reads(stream: BinaryIO, features: int | None) -> Iterator[Batch]:
    decoded = payloads.decode(stream.read(), payloads.JSON)
    if decoded.rows is None:
        raise SchemaMismatchError("Send rows, not a tensor of higher rank.")
    yield 1, _rows_matrix(decoded.rows, 1, features)


_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 10_000  # numpy's own limit on what it will parse


_READ_PIECE = 8 << 20  # the most asked of a stream at once: a header cannot make it allocate more


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    """``size`` bytes, or fewer only at the end of the stream: one read when the stream gives
    all at once, as files and S3 bodies do; pieces of at most 8 MiB otherwise, so a header
    that claims terabytes costs only the bytes that are really there."""
    if size <= _READ_PIECE:
        data = stream.read(size)
        if len(data) == size or not data:
            return data
        parts, got = [data], len(data)
    else:
        parts, got = [], 0
    while got < size:
        more = stream.read(min(size - got, _READ_PIECE))
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _npy_header(stream: BinaryIO, features: int | None) -> tuple[np.dtype[Any], int, int]:
    """(dtype, rows, row width) from an .npy header; the stream is left at the data."""
    head = _read_exact(stream, 10)
    if len(head) < 10 or not head.startswith(_NPY_MAGIC):
        raise MalformedRequestError("The input is not an .npy file (bad magic).")
    major = head[6]
    if major == 1:
        (length,) = struct.unpack("<H", head[8:10])
    elif major in (2, 3):
        (length,) = struct.unpack("<I", head[8:10] + _read_exact(stream, 2).ljust(2, b"\0"))
    else:
        raise MalformedRequestError(f"Unsupported .npy format version {major}.")
    if length > _NPY_MAX_HEADER:
        raise MalformedRequestError(f"The .npy header is {length} bytes, too long to read.")
    header_bytes = _read_exact(stream, length)
    try:
        if len(header_bytes) != length:
            raise ValueError("short header")
        header = ast.literal_eval(header_bytes.decode("utf-8" if major == 3 else "latin1"))
        dtype = np.dtype(header["descr"])
        shape = header["shape"]
        fortran = header["fortran_order"]
        if not isinstance(shape, tuple) or not isinstance(fortran, bool):
            raise ValueError("bad header fields")
        if not all(type(n) is int and n >= 0 for n in shape):
            raise ValueError("bad shape")
    except Exception:
        raise MalformedRequestError("The .npy header cannot be read.") from None
    if fortran or dtype.kind not in "fiu" or len(shape) not in (1, 2) or shape[-1] == 0:
        raise SchemaMismatchError(f"Unsupported .npy layout: dtype {dtype}, shape {shape}.")
    rows, width = (1, shape[0]) if len(shape) == 1 else shape
    _check(np.zeros((0, width)), 1, features)
    return dtype, rows, width


_NPY_READ_BYTES = 1 << 20  # what one read of .npy data aims at: fits a core's L2 cache


def _npy_reads(
    stream: BinaryIO, dtype: np.dtype[Any], rows: int, width: int, batch_rows: int
) -> Iterator[Batch]:
    """Reads of a whole number of batches (about a MiB each). Float32 data reaches the model
    without a copy, other dtypes are converted once a read, and the NaN check is vectorised:
    no per-row Python."""
    row_bytes = width * dtype.itemsize
    per_read = max(1, _NPY_READ_BYTES // (batch_rows * row_bytes)) * batch_rows
    for start in range(0, rows, per_read):
        count = min(per_read, rows - start)
        data = _read_exact(stream, count * row_bytes)
        if len(data) != count * row_bytes:
            raise MalformedRequestError(
                f"The .npy data ends early, at row {start + len(data) // row_bytes + 1} of {rows}."
            )
        chunk = _as_float32(np.frombuffer(data, dtype=dtype).reshape(count, width))
        if dtype.kind == "f":  # integers are always finite, also once converted
            _refuse_non_finite(chunk, start + 1)
        yield start + 1, chunk


def _as_float32(chunk: np.ndarray) -> np.ndarray:
    """Float32 as it is; integers, other widths and big-endian floats converted (a float64
    too large for float32 becomes inf, and the NaN check after the cast refuses it)."""
    if chunk.dtype == np.float32:
        return chunk
    with np.errstate(over="ignore"):
        return chunk.astype(np.float32)


def _refuse_non_finite(chunk: np.ndarray, first_row: int) -> None:
    """A NaN or an infinity fails the job, naming its row (``first_row`` is the chunk's).

    The common case, all finite, costs one pass: the sum of the squares, a dot product of
    the chunk with itself. A NaN or an infinity makes that sum NaN or inf; squares are
    never negative, so finite values cannot cancel to a NaN either: a finite sum proves
    every value finite. Large finite values can overflow it to inf (a square above
    float32's 3.4e38, from any value above ~1.8e19): so a sum that is not finite only sends
    the chunk to the precise scan, ``_first_bad_row``, which refuses it only if a value
    really is NaN or infinite - such inputs are slower to check, never refused.

    Why a dot: the chunk has just been read, and one pass over it while it is still in
    the caches is what counts. The max and the min this replaced are two passes; on the
    bench they cost ~4% of onnxruntime's time, the dot ~2.5%."""
    if chunk.size == 0:  # rows of no columns: nothing to check
        return
    flat = chunk.reshape(-1)  # C-contiguous (read or converted): a view, not a copy
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is an answer here
        squares = np.dot(flat, flat)
    if np.isfinite(squares):
        return
    bad = _first_bad_row(chunk)
    if bad is not None:
        row = first_row + bad
        raise SchemaMismatchError(f"Row {row} contains NaN or infinity.", row=row)


def _first_bad_row(chunk: np.ndarray) -> int | None:
    """The index of the first row holding a NaN or an infinity, element by element."""
    bad_rows = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
    return int(bad_rows[0]) if len(bad_rows) else None


def _encode(value: Any) -> str:
    # orjson: the text json.dumps writes with compact separators, ~7x faster (exponents
    # as e-6, not e-06); NaN outputs become null, not JSON's invalid NaN.
    return orjson.dumps(value).decode()


def output_type(accept: str) -> str:
    """The content type a job's output is written in, for the job's ``accept``."""
    base = (accept or NDJSON).split(",")[0].partition(";")[0].strip().lower()
    return base if base in OUTPUT_TYPES else NDJSON


class OutputWriter:
    """Predictions to bytes, a batch at a time, in the job's output format.

    ``batch`` gives the bytes that follow for one batch (maybe none; for .npy a view of the
    model's output, valid as long as it is held), ``end`` the rest.

    ``application/x-npy``: one .npy file of one output tensor, row i for input row i -
    the model's ``probabilities`` when it has them (float32, rows x classes), else its first
    output; ``application/x-npy; output=label`` names another. When the input's row count
    is known up front (``rows``: an .npy input's header states it) the header goes out with
    the first batch and every batch's bytes at once. Otherwise (text input) the data is
    spooled - in memory up to ``spool_bytes``, then in a temporary file - and header and data
    come from ``end``: the output is a fraction of the input's size (40 bytes a row for ten
    float32 probabilities against ~250 bytes of NDJSON in), so this costs no memory bound.
    Call ``close`` when done, whatever happened."""

    def __init__(self, accept: str, rows: int | None = None, spool_bytes: int = 32 << 20) -> None:
        self.content_type = output_type(accept)
        self._first = True
        self._tensor = _param((accept or NDJSON).split(",")[0].partition(";")[2], "output")
        self._name = ""  # the output tensor an .npy output holds, fixed by the first batch
        self._rows = rows
        self._spool_bytes = spool_bytes
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        self._dtype: np.dtype[Any] | None = None
        self._tail: tuple[int, ...] = ()
        self._written = 0

    @property
    def started(self) -> bool:
        """Whether a batch has been seen (an .npy output's header needs one: of an empty
        input, give ``batch`` the model's outputs for zero rows)."""
        return not self._first

    def batch(self, outputs: dict[str, np.ndarray]) -> bytes | memoryview:
        if self.content_type == NPY:
            return self._npy(outputs)
        if self.content_type == NDJSON:
            self._first = False
            return _ndjson(outputs)
        rows = output_rows(outputs)
        if self.content_type == CSV:
            self._first = False
            return self._csv(rows)
        prefix = b'{"predictions":[' if self._first else b","
        self._first = False
        return prefix + b",".join(_dumps(r) for r in rows)

    def end(self) -> Iterator[bytes]:
        if self.content_type == JSON:
            yield (b'{"predictions":[' if self._first else b"") + b"]}"
        elif self.content_type == NPY:
            yield from self._npy_end()

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _csv(self, rows: Iterable[dict[str, Any]]) -> bytes:
        out = io.StringIO()
        for row in rows:
            cells: list[str] = []
            for value in row.values():
                cells.extend(str(v) for v in (value if isinstance(value, list) else [value]))
            out.write(",".join(cells) + "\n")
        return out.getvalue().encode()

    # -- .npy --------------------------------------------------------------------------
    def _npy(self, outputs: dict[str, np.ndarray]) -> bytes | memoryview:
        if self._dtype is None:
            return self._npy_first(outputs)
        value = outputs.get(self._name)
        if (
            type(value) is not np.ndarray
            or value.dtype != self._dtype
            or value.shape[1:] != self._tail
        ):
            value = self._pick(outputs)  # a missing or non-numeric output: its own problem
            raise UnsupportedMediaTypeError(
                f"The model's output '{self._name}' changed from {self._dtype} "
                f"{list(self._tail)} to {value.dtype} {list(value.shape[1:])} per row between "
                f"batches; it cannot be one .npy file. Ask for {NDJSON}.",
            )
        self._written += len(value)
        if self._rows is not None and self._written > self._rows:
            raise self._row_mismatch()
        if self._spool is not None:
            self._spool.write(_raw_bytes(value))
            return b""
        return _raw_bytes(value)

    def _npy_first(self, outputs: dict[str, np.ndarray]) -> bytes:
        value = self._pick(outputs)
        self._first = False
        self._dtype, self._tail = value.dtype, tuple(value.shape[1:])
        if self._rows is None:
            # Lives across calls; ``close`` (or the garbage collector) removes it.
            self._spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115
                max_size=self._spool_bytes
            )
            self._spool.write(value.tobytes())
            self._written = len(value)
            return b""
        self._written = len(value)
        if self._written > self._rows:
            raise self._row_mismatch()
        return npy_header(self._dtype, (self._rows, *self._tail)) + value.tobytes()

    def _pick(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        if self._first:
            if self._tensor is not None:
                name = self._tensor
            else:
                name = "probabilities" if "probabilities" in outputs else next(iter(outputs))
            self._name = name
        name = self._name
        if name not in outputs:
            raise UnsupportedMediaTypeError(
                f"The model has no output '{name}' to write as {NPY}; its outputs: "
                f"{', '.join(outputs)}.",
                outputs=list(outputs),
            )
        value = outputs[name]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf" or not value.ndim:
            what = (
                f"{value.dtype} tensor of shape {list(value.shape)}"
                if isinstance(value, np.ndarray)
                else type(value).__name__
            )
            raise UnsupportedMediaTypeError(
                f"The model's output '{name}' is a {what}, not numbers one row per input row: "
                f"it cannot be written as {NPY}. Ask for {NDJSON} or {JSON}.",
            )
        return value

    def _npy_end(self) -> Iterator[bytes]:
        if self._dtype is None:
            raise ValueError("An .npy output needs one batch of outputs, if of zero rows.")
        if self._spool is None:
            if self._written != self._rows:
                raise self._row_mismatch()
            return
        self._spool.seek(0)
        yield npy_header(self._dtype, (self._written, *self._tail))
        while chunk := self._spool.read(8 << 20):
            yield chunk

    def _row_mismatch(self) -> GatewayError:
        return UnsupportedMediaTypeError(
            f"The model's output '{self._name}' has {self._written} rows for {self._rows} input "
            f"rows so far: it is not one row per input row and cannot be written as {NPY}. "
            f"Ask for {NDJSON} or {JSON}.",
        )


def _raw_bytes(value: np.ndarray) -> memoryview:
    """The array's bytes in C order, as an .npy header states them: a view of the model's
    output, not a copy (the writer that takes it copies it once, into its upload part)."""
    return np.ascontiguousarray(value).reshape(-1).view(np.uint8).data


def npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """The header ``np.save`` writes for a C-order array of ``dtype`` and ``shape``."""
    out = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:  # a header over 64 KiB: format 2.0 (not for any sane shape)
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, header)
    return out.getvalue()


def _param(params: str, name: str) -> str | None:
    for item in params.split(";"):
        key, _, value = item.partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"') or None
    return None


def _ndjson(outputs: dict[str, np.ndarray]) -> bytes:
    """One JSON object per row, with one encoder call per output column rather than one per
    row: the column's text is split into its rows (numbers only, so the split is exact)."""
    columns: list[list[str]] = []
    for value in outputs.values():
        if value.ndim == 1:
            columns.append(_encode(value.tolist())[1:-1].split(","))
        elif value.ndim == 2 and value.shape[1] > 0:
            text = _encode(value.tolist())
            columns.append(["[" + cell + "]" for cell in text[2:-2].split("],[")])
        else:
            columns.append([_encode(row) for row in value.tolist()])
    keys = [_encode(name) + ":" for name in outputs]
    lines = [
        "{" + ",".join(k + c for k, c in zip(keys, row, strict=True)) + "}"
        for row in zip(*columns, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _dumps(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row)
