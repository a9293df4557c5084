"""Certify inputs: read from JSON, multipart files (PNG, JPEG, .npy) or a raw .npy body, and validated.

Decoding never trusts a header: images are checked for format and size before their pixels are
decoded (a decompression bomb is refused from its header), .npy headers are parsed by a strict
grammar of their three keys (numpy's own reader evaluates the header as a Python literal, which
crashes on e.g. 9,000 unary minus signs) and checked against the bytes actually sent before
anything is allocated, and pickles are never loaded. A JSON body is kept as bytes by the API and
parsed where it is certified (a certify process), after its nesting depth and number count are
checked, so a large or deep body costs the API nothing but the bytes.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
from fastapi import HTTPException, Request
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from api.services import services_of

Scale = Literal["pixel", "model"]
NPY_TYPES = ("application/x-npy", "application/octet-stream", "application/npy")
IMAGE_FORMATS = {"PNG", "JPEG"}
F32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32


@dataclass
class RawInputs:
    """The request body, read but not yet decoded (decoded where it is certified: in a certify
    process, api.certify_pool, or on an attack thread)."""

    scale: Scale = "pixel"
    json_body: bytes | None = None  # a JSON body as sent; parse_json turns it into json_inputs + scale
    json_inputs: Any = None
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, content)
    npy: bytes | None = None


def _unprocessable(msg: str) -> HTTPException:
    return HTTPException(422, msg)


def _scale(value: Any) -> Scale:
    if value not in ("pixel", "model"):
        raise _unprocessable(
            f"scale: must be 'pixel' ([0,1] values, normalised by the server) or 'model', not {value!r}"
        )
    return cast(Scale, value)


async def read_certify_body(request: Request) -> RawInputs:
    """Read the body by content type: JSON, multipart/form-data, or a raw .npy array; else 415."""
    settings = services_of(request).settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        # not parsed here: parse_json runs where the inputs are certified, off the event loop
        return RawInputs(json_body=await request.body())
    if ctype == "multipart/form-data":
        limit = settings.max_certify_inputs
        try:
            form = await request.form(max_files=limit, max_fields=limit + 8, max_part_size=settings.max_upload_bytes)
        except (MultiPartException, StarletteHTTPException) as e:  # Starlette makes parse errors 400s
            message = str(getattr(e, "message", None) or getattr(e, "detail", e))
            if "Too many files" in message:
                raise HTTPException(413, f"at most {limit} files per request") from None
            raise HTTPException(400, f"malformed multipart body: {message}") from None
        raw = RawInputs(scale=_scale(form.get("scale", request.query_params.get("scale", "pixel"))))
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                raw.files.append((value.filename or "upload", await value.read()))
        await form.close()
        if not raw.files:
            raise _unprocessable("files: the multipart body holds no file parts (send images or .npy files)")
        return raw
    if ctype in NPY_TYPES:
        return RawInputs(scale=_scale(request.query_params.get("scale", "pixel")), npy=await request.body())
    raise HTTPException(
        415,
        f"send inputs as application/json, multipart/form-data (PNG, JPEG, .npy) or application/x-npy, not {ctype or 'no content type'}",
    )


def parse_json(raw: RawInputs, *, max_numbers: int, max_depth: int) -> RawInputs:
    """`raw` with its JSON body parsed into json_inputs and scale (raw itself if it has none).

    Refused before parsing: nesting deeper than `max_depth` (objects and arrays) and more than
    about `max_numbers` numbers (counted by commas: a body of numbers has fewer commas than 2 x
    its numbers), so the parsed lists never grow beyond what a valid request holds."""
    if raw.json_body is None:
        return raw
    data = raw.json_body
    brackets = np.frombuffer(data.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if len(brackets):
        depth = np.cumsum(np.where((brackets == 91) | (brackets == 123), 1, -1).astype(np.int32))
        if int(depth.max()) > max_depth:
            raise _unprocessable(
                f"body: JSON nested deeper than {max_depth} levels; expected "
                '{"inputs": [...]} with inputs nested as (n, *input_shape)'
            )
    if data.count(b",") > 2 * max_numbers + 16:
        raise HTTPException(
            413, f"body: more numbers than {max_numbers} (LBDN_MAX_CERTIFY_INPUTS inputs of the model's size)"
        )
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _unprocessable(f"body: not valid JSON ({e})") from None
    except RecursionError:  # brackets inside strings are not counted above
        raise _unprocessable(f"body: JSON nested deeper than {max_depth} levels") from None
    if not isinstance(body, dict) or "inputs" not in body:
        raise _unprocessable('body: expected {"inputs": [...], "scale": "pixel" | "model"}')
    extra = set(body) - {"inputs", "scale"}
    if extra:
        raise _unprocessable(f"body: unknown fields {sorted(extra)}")
    if not isinstance(body["inputs"], list) or not body["inputs"]:
        raise _unprocessable("inputs: expected a non-empty list of inputs, each of the model's input shape")
    return RawInputs(scale=_scale(body.get("scale", "pixel")), json_inputs=body["inputs"])


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# The .npy header grammar (numpy's format spec): a dict literal of exactly these keys, any order.
_NPY_ITEM = re.compile(
    r"\s*'(descr|fortran_order|shape)'\s*:\s*('[<>|=]?[a-zA-Z][0-9]{0,2}'|True|False|\(\s*(?:[0-9]{1,30}\s*"
    r"(?:,\s*[0-9]{1,30}\s*){0,31},?\s*)?\))\s*(?:,|(?=\}))"
)


def _npy_header(data: bytes, what: str) -> tuple[np.dtype[Any], tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, data offset) of .npy bytes; 422 for anything malformed."""

    def bad(why: str) -> HTTPException:
        return _unprocessable(f"{what}: not a .npy array ({why})")

    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        raise bad("no .npy magic string")
    major = data[6]
    if major not in (1, 2, 3):
        raise bad(f"unsupported .npy format version {major}.{data[7]}")
    size_bytes = 2 if major == 1 else 4
    start = 8 + size_bytes
    length = int.from_bytes(data[8:start], "little")
    if length > 65536 or start + length > len(data):
        raise bad("header length beyond the data")
    try:
        text = data[start : start + length].decode("latin1" if major < 3 else "utf8").strip()
    except UnicodeDecodeError:
        raise bad("header is not text") from None
    if not (text.startswith("{") and text.endswith("}")):
        raise bad("header is not a dict")
    items: dict[str, str] = {}
    pos = 1
    while (m := _NPY_ITEM.match(text, pos)) is not None:
        if m.group(1) in items:
            raise bad(f"key {m.group(1)!r} given twice")
        items[m.group(1)] = m.group(2)
        pos = m.end()
    if text[pos:].strip() != "}" or set(items) != {"descr", "fortran_order", "shape"}:
        raise bad("header must be {'descr': ..., 'fortran_order': ..., 'shape': (...)}")
    if items["descr"][0] != "'":
        raise bad(f"descr {items['descr']} is not a type string")
    try:
        dtype = np.dtype(items["descr"][1:-1])
    except TypeError:
        raise bad(f"unknown dtype {items['descr']}") from None
    if items["fortran_order"] not in ("True", "False"):
        raise bad("fortran_order must be True or False")
    if not items["shape"].startswith("("):
        raise bad("shape must be a tuple of integers")
    shape = tuple(int(v) for v in re.findall(r"[0-9]+", items["shape"]))
    return dtype, shape, items["fortran_order"] == "True", start + length


def load_npy(data: bytes, what: str) -> np.ndarray:
    """A numeric array from .npy bytes: header checked against the data size, no pickles."""
    dtype, shape, fortran, offset = _npy_header(data, what)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise _unprocessable(f"{what}: .npy dtype {dtype} is not a real number type")
    # math.prod, not np.prod: Python integers cannot overflow on a header declaring (2**64, 1)
    count = math.prod(shape)
    if count * dtype.itemsize > len(data) - offset:
        raise _unprocessable(f"{what}: .npy header declares {shape} {dtype} but the data is shorter (truncated?)")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


def load_image(data: bytes, what: str, channels: int, size: int, max_pixels: int) -> np.ndarray:
    """(C, H, W) float64 pixel values k/255 in [0, 1] from PNG/JPEG bytes of exactly size x size pixels."""
    # Pillow's decoders raise whatever a malformed file leads them to (SyntaxError, struct.error,
    # IndexError, TypeError, ...: fuzzing found over a thousand such files), so any exception from
    # opening or decoding untrusted bytes is that file's 422, never the server's 500.
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only (a GIF is named, then refused)
    except Image.DecompressionBombError as e:
        raise _unprocessable(f"{what}: refused as a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise _unprocessable(f"{what}: not a PNG or JPEG image") from None
    except Exception as e:  # see above
        raise _unprocessable(f"{what}: damaged PNG or JPEG header ({type(e).__name__})") from None
    with img:
        if img.format not in IMAGE_FORMATS:
            raise _unprocessable(f"{what}: {img.format} images are not accepted; send PNG or JPEG")
        w, h = img.size
        if w * h > max_pixels:
            raise _unprocessable(f"{what}: {w}x{h} pixels is over the decompression limit ({max_pixels} pixels)")
        if (w, h) != (size, size):
            raise _unprocessable(
                f"{what}: the model expects {size}x{size} pixel images, got {w}x{h} (images are not resized)"
            )
        try:
            img.load()
            pixels = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float64) / 255.0
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise _unprocessable(f"{what}: damaged or truncated image ({e})") from None
        except Exception as e:  # see the comment above
            raise _unprocessable(f"{what}: damaged image ({type(e).__name__})") from None
    if channels == 1:
        return pixels[None]
    if channels != 3:
        raise _unprocessable(f"{what}: the model takes {channels}-channel inputs; send them as .npy or JSON")
    return pixels.transpose(2, 0, 1)


def decode(raw: RawInputs, shape: tuple[int, ...], *, is_image: bool, max_inputs: int, max_pixels: int) -> np.ndarray:
    """(n, *shape) float64 inputs, exactly the values sent (a certificate is for the input given, not
    its float32 rounding), checked: shape, count, finite values within float32 range (the model's
    own dtype), [0,1] for pixel images. A JSON body must have been through parse_json."""
    expected = "x".join(map(str, shape))
    if raw.json_body is not None and raw.json_inputs is None:
        raise ValueError("decode: parse_json the JSON body first")
    if raw.json_inputs is not None:
        if not isinstance(raw.json_inputs, list) or not raw.json_inputs:
            raise _unprocessable("inputs: expected a non-empty list of inputs")
        if len(raw.json_inputs) > max_inputs:
            raise HTTPException(413, f"inputs: at most {max_inputs} inputs per request, got {len(raw.json_inputs)}")
        try:
            x = np.asarray(raw.json_inputs, dtype=np.float64)
        except OverflowError:  # an integer literal beyond float64, e.g. 400 digits
            raise _unprocessable(
                f"inputs: numbers must be within float32 range (|x| <= {F32_MAX:.4g}); one is an integer too large"
            ) from None
        except RecursionError:
            raise _unprocessable("inputs: nested too deeply; expected (n, *input_shape)") from None
        except (ValueError, TypeError):
            raise _unprocessable(
                f"inputs: expected numbers in nested lists of shape (n, {expected.replace('x', ', ')})"
            ) from None
        batch = _batch(x, shape, "inputs")
    elif raw.npy is not None:
        batch = _batch(load_npy(raw.npy, "body"), shape, "body")
    else:
        parts = []
        for i, (name, data) in enumerate(raw.files):
            what = f"file {i} ({name})"
            if name.lower().endswith(".npy") or data[:6] == b"\x93NUMPY":
                parts.append(_batch(load_npy(data, what), shape, what))
            elif is_image:
                parts.append(load_image(data, what, shape[0], shape[1], max_pixels)[None])
            else:
                raise _unprocessable(
                    f"{what}: this model takes {expected} feature vectors; send .npy or JSON, not images"
                )
        batch = np.concatenate(parts)
    if len(batch) > max_inputs:
        raise HTTPException(413, f"at most {max_inputs} inputs per request, got {len(batch)}")
    flat = batch.reshape(len(batch), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise _unprocessable(f"input {int(np.argmax(bad))}: NaN or infinite values")
    # The model runs in float32: a finite float64 such as 1e39 would become inf there (refused first)
    huge = (np.abs(flat.astype(np.float64)) > F32_MAX).any(axis=1)
    if huge.any():
        raise _unprocessable(
            f"input {int(np.argmax(huge))}: values must be within float32 range (|x| <= {F32_MAX:.4g})"
        )
    if is_image and raw.scale == "pixel":
        out = (batch < 0) | (batch > 1)
        if out.any():
            first = int(np.argmax(out.reshape(len(batch), -1).any(axis=1)))
            raise _unprocessable(
                f"input {first}: pixel values must lie in [0, 1] (scale 'pixel'); use scale 'model' for normalised inputs"
            )
    return batch.astype(np.float64)


def _batch(x: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Accept one input of `shape` or a batch (n, *shape)."""
    if x.shape == shape:
        return x[None]
    if x.ndim == len(shape) + 1 and x.shape[1:] == shape and x.shape[0] > 0:
        return x
    want = ", ".join(map(str, shape))
    raise _unprocessable(
        f"{what}: the model takes inputs of shape ({want}) or a batch (n, {want}), got {tuple(x.shape)}"
    )
