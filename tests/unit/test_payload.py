"""gateway.payload: every request format a client may send, and every way it can be wrong."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import payload
from gateway.errors import (
    GatewayError,
    MalformedRequestError,
    SchemaMismatchError,
    UnsupportedMediaTypeError,
)
from gateway.models import InputSchema

JSON, CSV, NDJSON, NPY = payload.JSON, payload.CSV, payload.NDJSON, payload.NPY


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_with_header(header: str, data: bytes = b"") -> bytes:
    """A version 1.0 .npy file with a hand-written header dict."""
    text = header.encode("latin1")
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


# --- JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "shape", "rows"),
    [
        pytest.param(
            b'{"inputs": [[1, 2, 3], [4, 5, 6]]}', (2, 3), [[1, 2, 3], [4, 5, 6]], id="inputs-batch"
        ),
        pytest.param(b'{"instances": [[1.5, 2.5]]}', (1, 2), [[1.5, 2.5]], id="instances"),
        pytest.param(b'{"inputs": [1, 2, 3]}', (1, 3), [[1, 2, 3]], id="inputs-single-row"),
        pytest.param(b'{"instances": [0.25, -1]}', (1, 2), [[0.25, -1]], id="instances-single-row"),
        pytest.param(b"[[1, 2], [3, 4]]", (2, 2), [[1, 2], [3, 4]], id="bare-list-of-rows"),
        pytest.param(b"[7, 8, 9]", (1, 3), [[7, 8, 9]], id="bare-single-row"),
        pytest.param(b"[1e3, -2.5e-3]", (1, 2), [[1000.0, -0.0025]], id="exponents"),
    ],
)
def test_json_row_formats(body: bytes, shape: tuple[int, ...], rows: list[list[float]]) -> None:
    decoded = payload.decode(body, "application/json")
    assert decoded.format == JSON
    assert decoded.shape == shape
    assert decoded.row_count == shape[0]
    assert decoded.rows == rows


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        (b'{"features": [1, 2]}', MalformedRequestError, "inputs"),
        (b'{"inputs": []}', MalformedRequestError, "non-empty"),
        (b'{"instances": 3}', MalformedRequestError, "non-empty"),
        (b"[]", MalformedRequestError, "non-empty"),
        (b'"just a string"', MalformedRequestError, "object or an array"),
        (b"42", MalformedRequestError, "object or an array"),
        (b"{not json", MalformedRequestError, "not valid JSON"),
        (b'{"inputs": [[1, 2], 3]}', SchemaMismatchError, "Row 2"),
        (b'{"inputs": [[1, "2"]]}', SchemaMismatchError, "Row 1, column 2"),
        (b'{"inputs": [[1, 2], [3, null]]}', SchemaMismatchError, "Row 2, column 2"),
        (b'{"inputs": [[1, 9007199254740993]]}', SchemaMismatchError, "too large"),
    ],
)
def test_json_rejections(body: bytes, error: type[GatewayError], fragment: str) -> None:
    with pytest.raises(error) as raised:
        payload.decode(body, "application/json")
    assert fragment in raised.value.detail
    assert type(raised.value) is error


@pytest.mark.parametrize(
    "body",
    [
        b"[NaN, 1]",
        b"[1, Infinity]",
        b"[-Infinity]",
        b'{"inputs": [[1, NaN]]}',
        b"[1e400]",  # parses to inf in Python
        b"[-1e400]",
    ],
)
def test_non_finite_json_numbers_are_rejected(body: bytes) -> None:
    with pytest.raises((MalformedRequestError, SchemaMismatchError)) as raised:
        payload.decode(body, "application/json")
    assert raised.value.status in (400, 422)


@pytest.mark.parametrize("literal", ["true", "false"])
def test_booleans_are_not_features(literal: str) -> None:
    with pytest.raises(SchemaMismatchError) as raised:
        payload.decode(f'{{"inputs": [[1, {literal}]]}}'.encode(), JSON)
    assert raised.value.extensions == {"row": 1, "column": 2}
    assert "bool" in raised.value.detail


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (JSON, b"[" * 100_000),
        (JSON, b'{"inputs": ' + b"[" * 100_000 + b"1" + b"]" * 100_000 + b"}"),
        (NDJSON, b"[" * 100_000),
    ],
)
def test_deeply_nested_json_is_a_malformed_request(content_type: str, body: bytes) -> None:
    with pytest.raises(MalformedRequestError) as raised:
        payload.decode(body, content_type)
    assert "nested too deeply" in raised.value.detail


def test_huge_integer_literal_is_a_malformed_request() -> None:
    # CPython refuses to convert integers of more than 4300 digits (ValueError).
    with pytest.raises(MalformedRequestError):
        payload.decode(b"[" + b"1" * 5000 + b"]", JSON)


# --- Open Inference Protocol v2 -------------------------------------------------------


def oip(shape: object, data: object, datatype: object = "FP32") -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype, "data": data}]}
    ).encode()


@pytest.mark.parametrize(
    ("body", "shape", "rows"),
    [
        pytest.param(
            oip([2, 3], [1, 2, 3, 4, 5, 6]), (2, 3), [[1, 2, 3], [4, 5, 6]], id="flat-data"
        ),
        pytest.param(oip([2, 2], [[1, 2], [3, 4]]), (2, 2), [[1, 2], [3, 4]], id="nested-data"),
        pytest.param(oip([3], [1, 2, 3]), (1, 3), [[1, 2, 3]], id="vector-is-one-row"),
        pytest.param(oip([1, 2], [0.5, 1.5], "FP64"), (1, 2), [[0.5, 1.5]], id="fp64"),
        pytest.param(oip([1, 2], [1, 2], "INT64"), (1, 2), [[1, 2]], id="int64"),
    ],
)
def test_oip_tensors(body: bytes, shape: tuple[int, ...], rows: list[list[float]]) -> None:
    decoded = payload.decode(body, JSON)
    assert decoded.shape == shape
    assert decoded.rows == rows


def test_oip_higher_rank_tensor_keeps_its_shape_without_rows() -> None:
    decoded = payload.decode(oip([2, 2, 2], list(range(8))), JSON)
    assert decoded.shape == (2, 2, 2)
    assert decoded.rows is None
    with pytest.raises(SchemaMismatchError, match=r"shape \[2, 2, 2\]"):
        payload.check_schema(decoded, InputSchema(features=4))


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        pytest.param(
            oip([2, 3], [1, 2, 3, 4, 5]),
            SchemaMismatchError,
            "needs 6 values; got 5",
            id="shape-mismatch",
        ),
        pytest.param(
            oip([2, 2], [1, 2, 3, 4, 5]), SchemaMismatchError, "needs 4 values", id="too-much-data"
        ),
        pytest.param(
            oip([1, 2], [1, 2], "BYTES"), SchemaMismatchError, "'BYTES'", id="bytes-datatype"
        ),
        pytest.param(
            oip([1, 2], [1, 2], "fp32"), SchemaMismatchError, "'fp32'", id="lower-case-datatype"
        ),
        pytest.param(oip([1, 2], [1, 2], None), SchemaMismatchError, "None", id="missing-datatype"),
        pytest.param(oip([0, 2], []), MalformedRequestError, "positive integers", id="zero-dim"),
        pytest.param(
            oip([1.5, 2], [1, 2]), MalformedRequestError, "positive integers", id="float-dim"
        ),
        pytest.param(
            oip([True, 2], [1, 2]), MalformedRequestError, "positive integers", id="bool-dim"
        ),
        pytest.param(oip([], [1]), MalformedRequestError, "positive integers", id="empty-shape"),
        pytest.param(
            oip([1, 2], "1,2"),
            MalformedRequestError,
            "'data' must be an array",
            id="data-not-array",
        ),
        pytest.param(
            oip([2, 2], [[1, 2], 3, 4]), MalformedRequestError, "mixes", id="mixed-nesting"
        ),
        pytest.param(oip([1, 2], [1, "x"]), SchemaMismatchError, "column 2", id="string-value"),
        pytest.param(oip([1, 2], [1, True]), SchemaMismatchError, "column 2", id="bool-value"),
        pytest.param(
            json.dumps({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}] * 2}).encode(),
            MalformedRequestError,
            "exactly one",
            id="two-tensors",
        ),
    ],
)
def test_oip_rejections(body: bytes, error: type[GatewayError], fragment: str) -> None:
    with pytest.raises(error) as raised:
        payload.decode(body, JSON)
    assert type(raised.value) is error
    assert fragment in raised.value.detail


@pytest.mark.parametrize("datatype", [["FP32"], {"type": "FP32"}, 32])
def test_oip_non_string_datatype_is_a_client_error(datatype: object) -> None:
    # Regression: an unhashable datatype used to escape as TypeError (a 500).
    with pytest.raises(SchemaMismatchError, match="not a numeric tensor type"):
        payload.decode(oip([1, 2], [1, 2], datatype), JSON)


# --- CSV -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "rows"),
    [
        (b"1,2,3\n4,5,6\n", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        (b"1,2\r\n3,4", [[1.0, 2.0], [3.0, 4.0]]),
        (b"\n1,2\n\n   \n3,4\n\n", [[1.0, 2.0], [3.0, 4.0]]),  # blank lines are skipped
        (b" 1.5 , -2e3 ", [[1.5, -2000.0]]),
        (b'"1","2"', [[1.0, 2.0]]),
    ],
)
def test_csv_rows(body: bytes, rows: list[list[float]]) -> None:
    decoded = payload.decode(body, "text/csv")
    assert decoded.format == CSV
    assert decoded.rows == rows
    assert decoded.shape == (len(rows), len(rows[0]))


def test_csv_bad_cell_names_row_and_column() -> None:
    with pytest.raises(SchemaMismatchError) as raised:
        payload.decode(b"1,2,3\n4,five,6\n", CSV)
    assert raised.value.extensions == {"row": 2, "column": 2}
    assert "Row 2, column 2" in raised.value.detail
    assert "'five'" in raised.value.detail


def test_csv_bad_cell_in_a_long_cell_is_quoted_shortly() -> None:
    with pytest.raises(SchemaMismatchError) as raised:
        payload.decode(b"x" * 1000, CSV)
    assert len(raised.value.detail) < 200


@pytest.mark.parametrize("cell", [b"nan", b"inf", b"-inf", b"NaN", b"Infinity", b"1e400"])
def test_csv_non_finite_cells_are_rejected(cell: bytes) -> None:
    with pytest.raises(SchemaMismatchError) as raised:
        payload.decode(b"1," + cell, CSV)
    assert raised.value.extensions == {"row": 1, "column": 2}


@pytest.mark.parametrize("body", [b"\n\n", b" , \n,,\n"])
def test_csv_without_rows_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedRequestError, match="no rows"):
        payload.decode(body, CSV)


@pytest.mark.parametrize("field", [b"1" * 200_000, b'"' + b"x" * 200_000 + b'"'])
def test_csv_field_over_the_csv_module_limit_is_a_client_error(field: bytes) -> None:
    # Regression: csv.field_size_limit() (131072) made csv.Error escape (a 500).
    assert len(field) > csv.field_size_limit()
    with pytest.raises(GatewayError) as raised:
        payload.decode(b"1,2\n" + field + b"\n", CSV)
    assert 400 <= raised.value.status < 500


# --- NDJSON ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "rows"),
    [
        (b"[1, 2]\n[3, 4]\n", [[1, 2], [3, 4]]),
        (b'{"inputs": [1, 2]}\n{"features": [3, 4]}', [[1, 2], [3, 4]]),
        (b"\n[1, 2]\n\n[3, 4]\n\n", [[1, 2], [3, 4]]),
        (b"[1, 2]\r\n[3, 4]\r\n", [[1, 2], [3, 4]]),
    ],
)
def test_ndjson_rows(body: bytes, rows: list[list[float]]) -> None:
    decoded = payload.decode(body, "application/x-ndjson")
    assert decoded.format == NDJSON
    assert decoded.rows == rows


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        (b"[1, 2]\n{oops", MalformedRequestError, "Line 2"),
        (b"[1, 2]\n\n7\n", SchemaMismatchError, "Line 3"),
        (b'[1, 2]\n{"other": [1]}', SchemaMismatchError, "Line 2"),
        (b"[1, 2]\n[1, NaN]", MalformedRequestError, "Line 2"),
        (b"[1, 2]\n[1, true]", SchemaMismatchError, "Row 2, column 2"),
        (b"\n  \n", MalformedRequestError, "no rows"),
    ],
)
def test_ndjson_rejections(body: bytes, error: type[GatewayError], fragment: str) -> None:
    with pytest.raises(error) as raised:
        payload.decode(body, NDJSON)
    assert fragment in raised.value.detail


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_ndjson_only_newline_ends_a_record(separator: str) -> None:
    # Regression: str.splitlines() cut a valid line at separators JSON allows in strings.
    body = f'{{"features": [1, 2], "note": "a{separator}b"}}\n[3, 4]\n'.encode()
    assert payload.decode(body, NDJSON).rows == [[1, 2], [3, 4]]


# --- .npy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "shape"),
    [
        (np.zeros((2, 3), dtype=np.float32), (2, 3)),
        (np.ones((4, 1), dtype=np.float64), (4, 1)),
        (np.arange(5, dtype=np.int64), (1, 5)),
        (np.zeros((2, 2), dtype=np.uint8), (2, 2)),
        (np.zeros((2, 3, 4), dtype=np.float16), (2, 3, 4)),
    ],
)
def test_npy_shape_is_read_from_the_header(array: np.ndarray, shape: tuple[int, ...]) -> None:
    decoded = payload.decode(npy_bytes(array), "application/x-npy")
    assert decoded.format == NPY
    assert decoded.shape == shape
    assert decoded.rows is None


def test_npy_version_2_header() -> None:
    buffer = io.BytesIO()
    array = np.zeros((3, 2), dtype=np.float32)
    np.lib.format.write_array(buffer, array, version=(2, 0))
    assert payload.decode(buffer.getvalue(), NPY).shape == (3, 2)


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        pytest.param(
            npy_bytes(np.zeros((2, 3), np.float32))[:-1],
            MalformedRequestError,
            "data length",
            id="truncated-data",
        ),
        pytest.param(
            npy_bytes(np.zeros((2, 3), np.float32)) + b"\0",
            MalformedRequestError,
            "data length",
            id="trailing-data",
        ),
        pytest.param(
            npy_bytes(np.zeros((2, 3), np.float32))[:30],
            MalformedRequestError,
            "header",
            id="truncated-header",
        ),
        pytest.param(
            b"\x93NUMPX" + npy_bytes(np.zeros(2, np.float32))[6:],
            MalformedRequestError,
            "bad magic",
            id="bad-magic",
        ),
        pytest.param(
            b"PK\x03\x04 not an npy file", MalformedRequestError, "bad magic", id="zip-file"
        ),
        pytest.param(b"\x93NUMPY\x01", MalformedRequestError, "bad magic", id="too-short"),
        pytest.param(
            b"\x93NUMPY\x09\x00" + b"\0" * 10,
            MalformedRequestError,
            "version 9",
            id="unknown-version",
        ),
        pytest.param(
            b"\x93NUMPY\x02\x00\x01\x00", MalformedRequestError, "Truncated", id="v2-short"
        ),
        pytest.param(
            npy_bytes(np.zeros((2, 2), np.complex64)),
            SchemaMismatchError,
            "dtype",
            id="complex-dtype",
        ),
        pytest.param(
            npy_bytes(np.zeros((2, 2), ">f4")), SchemaMismatchError, "dtype", id="big-endian"
        ),
        pytest.param(
            npy_bytes(np.asfortranarray(np.zeros((2, 2), np.float32))),
            SchemaMismatchError,
            "fortran",
            id="fortran-order",
        ),
        pytest.param(
            npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': ()}", b"\0" * 4),
            MalformedRequestError,
            "shape",
            id="scalar",
        ),
        pytest.param(
            npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}"),
            MalformedRequestError,
            "shape",
            id="negative-dim",
        ),
        pytest.param(
            npy_with_header("__import__('os').system('true')"),
            MalformedRequestError,
            "header",
            id="code-in-header",
        ),
    ],
)
def test_npy_rejections(body: bytes, error: type[GatewayError], fragment: str) -> None:
    with pytest.raises(error) as raised:
        payload.decode(body, NPY)
    assert type(raised.value) is error
    assert fragment in raised.value.detail


@pytest.mark.parametrize("descr", ["['<f4']", "{'<f4': 1}", "4"])
def test_npy_non_string_descr_is_a_client_error(descr: str) -> None:
    # Regression: an unhashable descr used to escape as TypeError (a 500).
    body = npy_with_header(
        f"{{'descr': {descr}, 'fortran_order': False, 'shape': (1,)}}", b"\0" * 4
    )
    with pytest.raises(GatewayError) as raised:
        payload.decode(body, NPY)
    assert 400 <= raised.value.status < 500


# --- content types, empty and undecodable bodies -------------------------------------


@pytest.mark.parametrize(
    ("header", "canonical"),
    [
        (None, JSON),
        ("", JSON),
        ("application/json", JSON),
        ("application/json; charset=utf-8", JSON),
        ("Application/JSON", JSON),
        ("text/json", JSON),
        ("text/csv", CSV),
        ("application/csv", CSV),
        ("text/csv; header=absent", CSV),
        ("application/x-ndjson", NDJSON),
        ("application/jsonlines", NDJSON),
        ("application/jsonl", NDJSON),
        ("application/x-jsonlines", NDJSON),
        ("application/x-npy", NPY),
        ("  application/x-npy  ", NPY),
    ],
)
def test_media_type_aliases(header: str | None, canonical: str) -> None:
    assert payload.media_type(header) == canonical


@pytest.mark.parametrize(
    "header", ["application/xml", "text/plain", "application/octet-stream", "json", "*/*"]
)
def test_unknown_content_type_is_415_listing_supported_types(header: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as raised:
        payload.decode(b"[1]", header)
    assert raised.value.status == 415
    assert raised.value.extensions["supported"] == list(payload.SUPPORTED_CONTENT_TYPES)
    assert "application/json" in raised.value.extensions["supported"]


@pytest.mark.parametrize("content_type", payload.SUPPORTED_CONTENT_TYPES)
def test_empty_body_is_400(content_type: str) -> None:
    with pytest.raises(MalformedRequestError, match="empty") as raised:
        payload.decode(b"", content_type)
    assert raised.value.status == 400


@pytest.mark.parametrize("content_type", [JSON, CSV, NDJSON])
def test_invalid_utf8_is_400_naming_the_byte(content_type: str) -> None:
    with pytest.raises(MalformedRequestError) as raised:
        payload.decode(b"[1, \xff]", content_type)
    assert raised.value.status == 400
    assert "UTF-8 (byte 4)" in raised.value.detail


# --- check_schema ----------------------------------------------------------------------


def test_check_schema_accepts_matching_rows_and_no_schema() -> None:
    decoded = payload.decode(b"[[1, 2, 3], [4, 5, 6]]", JSON)
    payload.check_schema(decoded, InputSchema(features=3))
    payload.check_schema(decoded, None)


@pytest.mark.parametrize(
    ("body", "content_type", "row", "got"),
    [
        (b"[[1, 2, 3], [4, 5]]", JSON, 2, 2),
        (b"[[1, 2]]", JSON, 1, 2),
        (b"1,2,3\n4,5,6\n7,8,9,10\n", CSV, 3, 4),
        (b"[1, 2, 3]\n[1, 2, 3]\n[1]", NDJSON, 3, 1),
    ],
)
def test_check_schema_names_the_first_wrong_row(
    body: bytes, content_type: str, row: int, got: int
) -> None:
    with pytest.raises(SchemaMismatchError) as raised:
        payload.check_schema(payload.decode(body, content_type), InputSchema(features=3))
    assert raised.value.status == 422
    assert f"Row {row} has {got} features; the model expects 3" in raised.value.detail
    assert raised.value.extensions == {"row": row, "expected_features": 3, "got_features": got}


@pytest.mark.parametrize(("features", "ok"), [(3, True), (4, False)])
def test_check_schema_for_npy_uses_the_shape(features: int, ok: bool) -> None:
    decoded = payload.decode(npy_bytes(np.zeros((5, 3), np.float32)), NPY)
    if ok:
        payload.check_schema(decoded, InputSchema(features=features))
    else:
        with pytest.raises(SchemaMismatchError, match="Row 1 has 3 features"):
            payload.check_schema(decoded, InputSchema(features=features))


# --- properties --------------------------------------------------------------------------

NPY_MAGIC = b"\x93NUMPY"
arbitrary_bodies = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: NPY_MAGIC + b),
    st.binary(max_size=300).map(lambda b: NPY_MAGIC + b"\x01\x00" + b),
    st.text(max_size=200).map(str.encode),
)


@settings(max_examples=400, deadline=None)
@given(body=arbitrary_bodies, content_type=st.sampled_from(payload.SUPPORTED_CONTENT_TYPES))
def test_decode_raises_only_gateway_errors(body: bytes, content_type: str) -> None:
    try:
        decoded = payload.decode(body, content_type)
    except GatewayError as exc:
        assert 400 <= exc.status < 500
    else:
        assert decoded.shape


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
matrices = st.integers(1, 6).flatmap(
    lambda width: st.lists(st.lists(finite, min_size=width, max_size=width), min_size=1, max_size=8)
)


@settings(max_examples=150, deadline=None)
@given(rows=matrices)
def test_every_text_format_decodes_the_same_matrix(rows: list[list[float]]) -> None:
    encodings = {
        JSON: json.dumps({"inputs": rows}),
        CSV: "\n".join(",".join(repr(v) for v in row) for row in rows),
        NDJSON: "\n".join(json.dumps(row) for row in rows),
    }
    for content_type, text in encodings.items():
        decoded = payload.decode(text.encode(), content_type)
        assert decoded.shape == (len(rows), len(rows[0])), content_type
        assert decoded.rows == rows, content_type
        payload.check_schema(decoded, InputSchema(features=len(rows[0])))
        with pytest.raises(SchemaMismatchError):
            payload.check_schema(decoded, InputSchema(features=len(rows[0]) + 1))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[NaN, 1]", "NaN is not a finite number"),
        (b"[1, -Infinity]", "-Infinity is not a finite number"),
        (b"[1, 2,]", "not valid JSON"),
    ],
)
def test_what_the_fast_parser_refuses_is_explained_precisely(body: bytes, fragment: str) -> None:
    with pytest.raises(MalformedRequestError) as raised:
        payload.decode(body, JSON)
    assert fragment in raised.value.detail


def test_a_number_beyond_a_double_is_named_by_row_and_column() -> None:
    # orjson refuses 1e999; the precise parser reads it as inf, which the row check names.
    with pytest.raises(SchemaMismatchError) as raised:
        payload.decode(b'{"inputs": [[1, 2], [3, 1e999]]}', JSON)
    assert raised.value.extensions == {"row": 2, "column": 2}
