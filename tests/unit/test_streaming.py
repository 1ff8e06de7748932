"""model_runtime.streaming: .npy inputs read in place, .npy outputs written batch by batch,
and precise problems for every bad input rather than a crash."""

from __future__ import annotations

import io
import json
import random
import struct
import warnings

import numpy as np
import pytest

import model_runtime.streaming as streaming
from gateway.errors import (
    GatewayError,
    MalformedRequestError,
    SchemaMismatchError,
    UnsupportedMediaTypeError,
)
from model_runtime.streaming import NDJSON, NPY, OutputWriter, npy_header, read_batches

RNG = np.random.default_rng(7)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def rows(n: int, width: int = 8) -> np.ndarray:
    return RNG.uniform(-4, 4, size=(n, width)).astype(np.float32)


def collect(
    body: bytes, batch_rows: int = 4, features: int | None = 8
) -> list[tuple[int, np.ndarray]]:
    return [
        (first, m.copy()) for first, m in read_batches(io.BytesIO(body), NPY, batch_rows, features)
    ]


# -- .npy in ----------------------------------------------------------------------------
@pytest.mark.parametrize("read_bytes", [0, 64, 1 << 20])  # a batch a read, a few, all at once
def test_npy_batches_are_the_input_in_order_with_the_row_count_known_up_front(
    monkeypatch: pytest.MonkeyPatch, read_bytes: int
) -> None:
    monkeypatch.setattr(streaming, "_NPY_READ_BYTES", read_bytes)
    x = rows(23)
    batches = read_batches(io.BytesIO(npy(x)), NPY, 4, 8)
    assert batches.rows == 23
    got = [(first, m.copy()) for first, m in batches]
    assert [first for first, _ in got] == [1, 5, 9, 13, 17, 21]
    assert [len(m) for _, m in got] == [4, 4, 4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([m for _, m in got]), x)


def test_float32_batches_are_views_of_the_read_not_copies() -> None:
    for _first, matrix in read_batches(io.BytesIO(npy(rows(10))), NPY, 4, 8):
        assert matrix.dtype == np.float32
        assert not matrix.flags.owndata
        assert not matrix.flags.writeable  # a view of the (immutable) bytes read, not a copy
        assert matrix.flags.c_contiguous  # what onnxruntime takes without a copy


@pytest.mark.parametrize("dtype", ["<f8", "<f2", "<i4", "|u1", ">f4"])
def test_other_dtypes_are_converted_to_float32(dtype: str) -> None:
    x = RNG.integers(0, 100, size=(9, 8)).astype(dtype)
    got = np.concatenate([m for _, m in collect(npy(x))])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_a_1d_array_is_one_row_and_an_empty_one_no_batches() -> None:
    [(first, matrix)] = collect(npy(np.arange(8, dtype=np.float32)))
    assert first == 1 and matrix.shape == (1, 8)
    batches = read_batches(io.BytesIO(npy(np.zeros((0, 8), np.float32))), NPY, 4, 8)
    assert batches.rows == 0 and list(batches) == []


def test_npy_format_versions_2_and_3_are_read() -> None:
    x = rows(5)
    body = npy(x)
    header_len = struct.unpack("<H", body[8:10])[0]
    header = body[10 : 10 + header_len]
    for major in (2, 3):
        v2 = b"\x93NUMPY" + bytes([major, 0]) + struct.pack("<I", len(header)) + header
        got = np.concatenate([m for _, m in collect(v2 + body[10 + header_len :])])
        np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("cut_row", [0, 1, 6, 22])
def test_truncated_data_names_the_first_incomplete_row(cut_row: int) -> None:
    x = rows(23)
    body = npy(x)
    data_start = len(body) - x.nbytes
    cut = body[: data_start + cut_row * 32 + 5]  # 5 bytes into row cut_row + 1
    with pytest.raises(MalformedRequestError) as caught:
        collect(cut)
    assert caught.value.status == 400
    assert caught.value.detail == f"The .npy data ends early, at row {cut_row + 1} of 23."


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", "The input is not an .npy file (bad magic)."),
        (b"\x93NUMP", "The input is not an .npy file (bad magic)."),
        (b"PK\x03\x04" + b"\0" * 60, "The input is not an .npy file (bad magic)."),
        (b"\x93NUMPY\x07\x00\x10\x00" + b" " * 16, "Unsupported .npy format version 7."),
        (
            b"\x93NUMPY\x02\x00\xff\xff\xff\x7f",
            "The .npy header is 2147483647 bytes, too long to read.",
        ),
        (b"\x93NUMPY\x01\x00\x40\x00{'descr': '<f4'", "The .npy header cannot be read."),
        (b"\x93NUMPY\x01\x00\x10\x00" + b"not a dict!!!!!\n", "The .npy header cannot be read."),
    ],
)
def test_garbled_headers_are_400_problems(body: bytes, detail: str) -> None:
    with pytest.raises(MalformedRequestError) as caught:
        read_batches(io.BytesIO(body), NPY, 4, 8)
    assert caught.value.status == 400
    assert caught.value.detail == detail


def _with_header(header: str, data: bytes = b"") -> bytes:
    text = header.encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 8)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': ('2', 8)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 8]}",
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 8)}",
        "{'descr': 'nonsense', 'fortran_order': False, 'shape': (2, 8)}",
        "{'fortran_order': False, 'shape': (2, 8)}",
        "__import__('os').system('true')",
    ],
)
def test_header_fields_of_the_wrong_kind_are_400_problems(header: str) -> None:
    with pytest.raises(MalformedRequestError, match=r"^The \.npy header cannot be read\.$"):
        read_batches(io.BytesIO(_with_header(header, b"\0" * 64)), NPY, 4, 8)


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 8)}",
        "{'descr': '|O', 'fortran_order': False, 'shape': (2, 8)}",
        "{'descr': '<c8', 'fortran_order': False, 'shape': (2, 8)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': ()}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0)}",
    ],
)
def test_unsupported_layouts_are_422_problems(header: str) -> None:
    with pytest.raises(SchemaMismatchError, match=r"^Unsupported \.npy layout"):
        read_batches(io.BytesIO(_with_header(header, b"\0" * 64)), NPY, 4, 8)


def test_the_wrong_width_is_a_422_naming_row_1_before_any_data_is_read() -> None:
    with pytest.raises(SchemaMismatchError) as caught:
        read_batches(io.BytesIO(npy(rows(3, width=7))), NPY, 4, 8)
    assert caught.value.detail == "Row 1 has 7 features; the model expects 8."


@pytest.mark.parametrize("read_bytes", [0, 1 << 20])
@pytest.mark.parametrize(("bad", "value"), [(0, np.nan), (13, np.inf), (22, -np.inf)])
def test_nan_or_infinity_names_its_row(
    monkeypatch: pytest.MonkeyPatch, read_bytes: int, bad: int, value: float
) -> None:
    monkeypatch.setattr(streaming, "_NPY_READ_BYTES", read_bytes)
    x = rows(23)
    x[bad, 3] = value
    with pytest.raises(SchemaMismatchError) as caught:
        collect(npy(x))
    assert caught.value.detail == f"Row {bad + 1} contains NaN or infinity."
    assert caught.value.extensions["row"] == bad + 1


def test_float64_beyond_float32_range_is_refused_as_infinity() -> None:
    x = rows(3).astype(np.float64)
    x[1, 0] = 1e300
    with pytest.raises(SchemaMismatchError, match=r"^Row 2 contains NaN or infinity\.$"):
        collect(npy(x))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_bad_value_is_found_wherever_it_is(value: float) -> None:
    """The check's fast path is a dot product (vectorised, with tails of odd lengths): a
    bad value in any position of any row is caught, and named by its row."""
    x = rows(5, width=7)
    for row in range(5):
        for column in range(7):
            bad = x.copy()
            bad[row, column] = value
            with pytest.raises(SchemaMismatchError) as caught:
                collect(npy(bad), batch_rows=2, features=7)
            assert caught.value.extensions["row"] == row + 1, (row, column)


@pytest.mark.parametrize("read_bytes", [0, 1 << 20])
def test_nan_in_the_last_row_of_the_last_batch_names_it(
    monkeypatch: pytest.MonkeyPatch, read_bytes: int
) -> None:
    monkeypatch.setattr(streaming, "_NPY_READ_BYTES", read_bytes)
    x = rows(1030)
    x[-1, -1] = np.nan
    with pytest.raises(SchemaMismatchError, match=r"^Row 1030 contains NaN or infinity\.$"):
        collect(npy(x), batch_rows=256)


def test_large_finite_values_are_accepted_unchanged() -> None:
    """Values whose sum would overflow float32 to inf are finite, and pass as they are."""
    top = np.finfo(np.float32).max
    x = np.full((9, 8), top, dtype=np.float32)
    x[::2] = -top
    got = np.concatenate([m for _, m in collect(npy(x))])
    assert got.tobytes() == x.tobytes()


def _spy_on_the_precise_scan(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the chunks the NaN check scans element by element (its slow path)."""
    scans: list[int] = []
    precise = streaming._first_bad_row

    def counted(chunk: np.ndarray) -> int | None:
        scans.append(len(chunk))
        return precise(chunk)

    monkeypatch.setattr(streaming, "_first_bad_row", counted)
    return scans


def test_ordinary_values_pass_the_fast_check_without_an_elementwise_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scans = _spy_on_the_precise_scan(monkeypatch)
    x = rows(23) * 1e6
    x[5, 1] = np.finfo(np.float32).tiny / 4  # a subnormal is finite too
    got = np.concatenate([m for _, m in collect(npy(x))])
    assert got.tobytes() == x.tobytes()
    assert scans == []


@pytest.mark.parametrize("read_bytes", [0, 1 << 20])
def test_values_whose_squares_overflow_fall_back_to_the_precise_scan_and_pass(
    monkeypatch: pytest.MonkeyPatch, read_bytes: int
) -> None:
    """2e19 squared is beyond float32's range, so the fast check's sum is inf: the chunk is
    scanned element by element, found finite, and passes unchanged - with no overflow
    warning (numpy warns on an overflowing dot unless told not to)."""
    monkeypatch.setattr(streaming, "_NPY_READ_BYTES", read_bytes)
    scans = _spy_on_the_precise_scan(monkeypatch)
    x = rows(23)
    x[17, 6] = 2e19
    x[3, 0] = -3e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = np.concatenate([m for _, m in collect(npy(x))])
    assert got.tobytes() == x.tobytes()
    # Only the chunks holding a large value are scanned: all of them in one read, the
    # two batches (rows 1-4 and 17-20) when each batch is its own read.
    assert scans == ([23] if read_bytes else [4, 4])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_bad_value_behind_an_overflowing_one_is_still_named(value: float) -> None:
    """An overflow and a real NaN look alike to the fast check; the scan tells them apart
    and names the bad value's row, not the large value's."""
    x = rows(23)
    x[2, 3] = 3e38
    x[9, 0] = -2e19
    x[14, 7] = value
    with pytest.raises(SchemaMismatchError) as caught:
        collect(npy(x), batch_rows=64)
    assert caught.value.detail == "Row 15 contains NaN or infinity."


@pytest.mark.parametrize("dtype", ["<f8", ">f4", "<f2"])
def test_nan_in_other_float_dtypes_names_its_row(dtype: str) -> None:
    x = rows(10).astype(dtype)
    x[7, 2] = np.nan
    with pytest.raises(SchemaMismatchError, match=r"^Row 8 contains NaN or infinity\.$"):
        collect(npy(x))


def test_float64_within_float32_range_is_converted_like_numpy() -> None:
    x = RNG.normal(0, 1e30, size=(9, 8))
    got = np.concatenate([m for _, m in collect(npy(x))])
    assert got.dtype == np.float32
    assert got.tobytes() == x.astype(np.float32).tobytes()


class Trickle(io.RawIOBase):
    """A stream that gives at most 7 bytes a read, as a socket may."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 7) if size >= 0 else 7)


def test_short_reads_are_not_mistaken_for_the_end() -> None:
    x = rows(10)
    got = [m.copy() for _, m in read_batches(Trickle(npy(x)), NPY, 4, 8)]  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.concatenate(got), x)


def test_mangled_inputs_give_problems_never_other_exceptions() -> None:
    """Truncations and byte flips of a valid file, in every content type: a batch or a
    GatewayError with a 4xx status - anything else would be a worker bug."""
    rng = random.Random(1234)
    x = rows(40)
    bodies = {
        NPY: npy(x),
        NDJSON: "\n".join(json.dumps(r) for r in x.tolist()).encode(),
        "text/csv": "\n".join(",".join(map(str, r)) for r in x.tolist()).encode(),
        "application/json": json.dumps({"inputs": x.tolist()}).encode(),
    }
    outcomes = {"ok": 0, "problem": 0}
    for content_type, body in bodies.items():
        for _ in range(150):
            mangled = bytearray(body)
            if rng.random() < 0.5:
                del mangled[rng.randrange(len(mangled)) :]
            for _ in range(rng.randrange(1, 4)):
                if mangled:
                    mangled[rng.randrange(min(len(mangled), 160))] = rng.randrange(256)
            try:
                for _first, matrix in read_batches(io.BytesIO(bytes(mangled)), content_type, 8, 8):
                    assert matrix.dtype == np.float32 and matrix.shape[1] == 8
                outcomes["ok"] += 1
            except GatewayError as exc:
                assert 400 <= exc.status < 500, (content_type, exc)
                outcomes["problem"] += 1
    assert outcomes["problem"] > 100 and outcomes["ok"] > 10, outcomes


# -- .npy out ---------------------------------------------------------------------------
def outputs(n: int, classes: int = 10) -> dict[str, np.ndarray]:
    probabilities = RNG.random((n, classes), dtype=np.float32)
    return {"label": probabilities.argmax(axis=1).astype(np.int64), "probabilities": probabilities}


def write(out: OutputWriter, batches: list[dict[str, np.ndarray]]) -> bytes:
    sink = io.BytesIO()
    try:
        for batch in batches:
            sink.write(out.batch(batch))
        for chunk in out.end():
            sink.write(chunk)
    finally:
        out.close()
    return sink.getvalue()


@pytest.mark.parametrize("known", [True, False])
def test_npy_output_is_exactly_what_np_save_writes_for_the_probabilities(known: bool) -> None:
    batches = [outputs(4), outputs(4), outputs(3)]
    out = OutputWriter(NPY, rows=11 if known else None, spool_bytes=64)  # spills to disk
    assert out.content_type == NPY
    body = write(out, batches)
    whole = np.concatenate([b["probabilities"] for b in batches])
    assert body == npy(whole)  # header and data, byte for byte
    assert np.load(io.BytesIO(body)).tobytes() == whole.tobytes()


def test_with_the_row_count_known_the_header_leads_the_first_batch() -> None:
    out = OutputWriter(NPY, rows=8)
    first = out.batch(outputs(4))
    assert first.startswith(b"\x93NUMPY") and len(first) == 128 + 4 * 10 * 4
    assert len(out.batch(outputs(4))) == 4 * 10 * 4  # raw bytes only
    assert list(out.end()) == []


def test_without_the_row_count_batches_are_held_back_until_the_end() -> None:
    out = OutputWriter(NPY)
    assert out.batch(outputs(4)) == b""
    chunks = list(out.end())
    assert chunks[0].startswith(b"\x93NUMPY") and b"(4, 10)" in chunks[0]
    out.close()


def test_output_parameter_picks_another_tensor_and_label_is_int64() -> None:
    batches = [outputs(5), outputs(2)]
    body = write(OutputWriter("application/x-npy; output=label", rows=7), batches)
    got = np.load(io.BytesIO(body))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.concatenate([b["label"] for b in batches]))


def test_a_model_without_probabilities_gives_its_first_output() -> None:
    body = write(OutputWriter(NPY, rows=3), [{"variable": np.ones((3, 1), np.float32)}])
    assert np.load(io.BytesIO(body)).shape == (3, 1)


def test_zero_rows_still_make_a_loadable_file() -> None:
    body = write(OutputWriter(NPY, rows=0), [outputs(0)])
    got = np.load(io.BytesIO(body))
    assert got.shape == (0, 10) and got.dtype == np.float32
    with pytest.raises(ValueError, match="needs one batch"):
        list(OutputWriter(NPY, rows=0).end())


def test_a_missing_output_is_a_415_naming_the_outputs() -> None:
    out = OutputWriter("application/x-npy;output=scores", rows=4)
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        out.batch(outputs(4))
    assert caught.value.status == 415
    assert caught.value.detail == (
        "The model has no output 'scores' to write as application/x-npy; its outputs: "
        "label, probabilities."
    )


@pytest.mark.parametrize(
    "value",
    [
        np.array(["a", "b"], dtype=object),
        np.array(["a", "b"]),
        [{0: 0.1, 1: 0.9}, {0: 0.5, 1: 0.5}],  # a ZipMap: a sequence of maps
        np.float32(1.0),
    ],
)
def test_outputs_that_are_not_numbers_per_row_are_415s(value: object) -> None:
    out = OutputWriter("application/x-npy; output=odd", rows=2)
    with pytest.raises(UnsupportedMediaTypeError, match="cannot be written as application/x-npy"):
        out.batch({"odd": value})  # type: ignore[dict-item]


def test_an_output_that_is_not_one_row_per_input_row_is_a_415() -> None:
    out = OutputWriter(NPY, rows=4)
    out.batch(outputs(3))
    with pytest.raises(UnsupportedMediaTypeError, match="has 3 rows for 4 input rows"):
        list(out.end())
    out = OutputWriter(NPY, rows=4)
    with pytest.raises(UnsupportedMediaTypeError, match="has 5 rows for 4 input rows"):
        out.batch(outputs(5))


def test_an_output_whose_row_shape_changes_is_a_415() -> None:
    out = OutputWriter(NPY, rows=8)
    out.batch(outputs(4, classes=10))
    with pytest.raises(UnsupportedMediaTypeError, match="changed from float32"):
        out.batch(outputs(4, classes=3))


def test_npy_header_matches_numpy_for_any_shape() -> None:
    for shape in [(0,), (7,), (3, 10), (2, 3, 4)]:
        array = np.zeros(shape, np.float32)
        assert npy(array).startswith(npy_header(array.dtype, shape))


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("application/x-npy", NPY),
        ("Application/X-NPY; output=label", NPY),
        ("application/x-npy, application/json", NPY),
        ("application/json", "application/json"),
        ("text/csv", "text/csv"),
        ("", NDJSON),
        ("*/*", NDJSON),
        ("application/octet-stream", NDJSON),
    ],
)
def test_accept_picks_the_output_format(accept: str, content_type: str) -> None:
    assert OutputWriter(accept).content_type == content_type


def test_text_formats_still_end_as_before() -> None:
    assert write(OutputWriter("application/json"), []) == b'{"predictions":[]}'
    json_body = write(OutputWriter("application/json"), [outputs(2), outputs(1)])
    assert len(json.loads(json_body)["predictions"]) == 3
    ndjson_lines = write(OutputWriter(NDJSON), [outputs(2)]).splitlines()
    assert [set(json.loads(line)) for line in ndjson_lines] == [{"label", "probabilities"}] * 2
    assert write(OutputWriter("text/csv"), [outputs(2)]).count(b"\n") == 2


class Counting(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.asked.append(-1 if size is None else size)
        return super().read(size)


def test_a_header_claiming_huge_rows_reads_only_what_is_there() -> None:
    """A model of unknown width: the header's claim (a billion floats a row) must not turn
    into one giant read (http.client allocates what it is asked for)."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1000000000)}"
    stream = Counting(_with_header(header, b"\0" * 1000))
    with pytest.raises(MalformedRequestError, match=r"ends early, at row 1 of 2\.$"):
        list(read_batches(stream, NPY, 1024, None))
    assert max(stream.asked) <= 8 << 20
