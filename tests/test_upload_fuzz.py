"""Fuzzing the certify body parsers (api.uploads) with hypothesis: whatever the bytes, a parser returns
a checked array or refuses with a 4xx HTTPException, never another exception (a 500 in the API).

Each property runs 200 cases (about a second each here); the examples pinned with
@example are the inputs that gave 500s before (issue 22).
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from fastapi import HTTPException
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from api.uploads import RawInputs, decode, load_image, load_npy, parse_json

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def split_idat_png(bad_type: bytes | None = None) -> bytes:
    """A 32x32 RGB PNG whose image data is split in two IDAT chunks (as many encoders write it);
    with `bad_type`, the second data chunk gets that type."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    d = buf.getvalue()
    n = struct.unpack(">I", d[33:37])[0]
    data = d[41 : 41 + n]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    half = len(data) // 2
    return d[:33] + chunk(b"IDAT", data[:half]) + chunk(bad_type or b"IDAT", data[half:]) + chunk(b"IEND", b"")


PNG, JPEG, SPLIT = _image("PNG"), _image("JPEG"), split_idat_png()
# a 32x32 PNG whose second data chunk has type b"\x00\x01\x02\x03": SyntaxError from Pillow's load()
BROKEN_CHUNK = split_idat_png(b"\x00\x01\x02\x03")


def _npy_header(text: str, major: int = 1) -> bytes:
    raw = text.encode("latin1", "replace")
    size = 2 if major == 1 else 4
    raw += b" " * (63 - (8 + size + len(raw)) % 64) + b"\n"
    return (
        b"\x93NUMPY"
        + bytes([major, 0])
        + (struct.pack("<H", len(raw)) if major == 1 else struct.pack("<I", len(raw)))
        + raw
    )


def _refused(e: HTTPException) -> None:
    assert 400 <= e.status_code < 500 and isinstance(e.detail, str) and e.detail


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(8, len(data))) :]
    if draw(st.booleans()):  # a chunk type or marker of random bytes at a random place
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@FUZZ
@given(st.one_of(mutated(PNG), mutated(SPLIT), mutated(JPEG), st.binary(max_size=200)))
@example(BROKEN_CHUNK)
def test_images_decode_or_are_refused(data: bytes) -> None:
    try:
        x = load_image(data, "file 0", 3, 32, 64 * 64)
    except HTTPException as e:
        _refused(e)
        return
    assert x.shape == (3, 32, 32) and x.dtype == np.float64 and 0 <= x.min() and x.max() <= 1


def test_the_broken_chunk_png_is_a_422() -> None:
    with pytest.raises(HTTPException) as e:
        load_image(BROKEN_CHUNK, "file 0 (x.png)", 3, 32, 64 * 64)
    assert e.value.status_code == 422 and "x.png" in e.value.detail


HEADER_PIECES = st.sampled_from(
    ["{", "}", "(", ")", ",", ":", " ", "'descr'", "'shape'", "'fortran_order'", "'<f8'", "'|u1'", "'O'",
     "True", "False", "-", "+", "3", "2**64", "1e9", "[", "]", "'", '"', "\\", "\x00", "é", "0x1f"]
)  # fmt: skip


@FUZZ
@given(
    st.one_of(
        st.lists(HEADER_PIECES, max_size=30).map("".join),
        st.text(max_size=80),
        st.just("{'shape': (").map(lambda s: s + "-" * 9000),
    ),
    st.sampled_from([1, 2, 3]),
    st.binary(max_size=64),
)
@example("{'shape': (" + "-" * 9000, 1, b"")
@example("{'shape': (" + "+" * 9000, 1, b"")
@example("{'descr': '<f8', 'sha", 1, b"\x00" * 8)
def test_npy_headers_parse_or_are_refused(header: str, major: int, data: bytes) -> None:
    try:
        x = load_npy(_npy_header(header, major) + data, "body")
    except HTTPException as e:
        _refused(e)
        return
    assert isinstance(x, np.ndarray) and x.dtype.kind in "biuf"


@FUZZ
@given(
    st.sampled_from(["<f8", ">f4", "|u1", "<i2", "|b1", "<u4"]),
    st.lists(st.integers(0, 4), max_size=4),
    st.booleans(),
)
def test_valid_npy_reads_as_numpy_does(dtype: str, shape: list[int], fortran: bool) -> None:
    x = (np.arange(int(np.prod(shape))) % 7).astype(dtype).reshape(shape, order="F" if fortran else "C")
    if fortran:
        x = np.asfortranarray(x)
    buf = io.BytesIO()
    np.save(buf, x)
    got = load_npy(buf.getvalue(), "body")
    assert got.dtype == x.dtype and got.shape == x.shape and np.array_equal(got, x)


JSON_VALUES = st.recursive(
    # (no subnormals: a library loaded earlier in the same pytest process, e.g. one built with
    # -ffast-math, may have set flush-to-zero, and hypothesis then refuses to draw them)
    st.none() | st.booleans() | st.floats(allow_subnormal=False) | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["inputs", "scale", "x"]), inner),
    max_leaves=20,
)


@FUZZ
@given(st.one_of(JSON_VALUES.map(lambda v: json.dumps(v).encode()), st.binary(max_size=100)))
@example(b'{"inputs": ' + b"[" * 900 + b"]" * 900 + b"}")
@example(b'{"inputs": [[1.0]')
def test_json_bodies_parse_or_are_refused(body: bytes) -> None:
    try:
        raw = parse_json(RawInputs(json_body=body), max_numbers=4, max_depth=8)
        x = decode(raw, (1,), is_image=False, max_inputs=4, max_pixels=1)
    except HTTPException as e:
        _refused(e)
        return
    assert x.dtype == np.float64 and x.shape[1:] == (1,)
