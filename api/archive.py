"""An uploaded checkpoint's declared sizes, read before anything in it is decompressed or loaded.

A torch.save file (the paper's `model.ckpt`) is a zip: `torch.load` inflates every entry to the
size its central directory declares, so a 2 MB upload can declare a deflated 2 GiB entry (a zip
bomb). A safetensors file declares its tensors' byte ranges in a JSON header. Both are checked
here from those declarations alone (Python's `zipfile` reads only the central directory; the
safetensors header is the first 8 + n bytes) against:

- LBDN_MAX_UPLOAD_BYTES: what an upload may expand to (413); compression never buys more room
  than sending the same bytes uncompressed would;
- the tensors the spec's network holds (`expected_bytes`, built on torch's meta device: shapes,
  no storage), with room for float64 weights and the pickle's own entries (422).

The legacy torch.save format (a bare pickle, PyTorch < 1.6) declares its storages only inside the
pickle, so it cannot be checked without unpickling and is refused.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from lipcore.spec import ExperimentSpec

# Tensors may be float64 (twice float32's bytes); the zip's data.pkl, version and byteorder
# entries and a safetensors' padding take the rest.
DTYPE_ROOM = 2
SLACK_BYTES = 2**20
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}  # what torch's miniz reads


class ArchiveError(ValueError):
    """An upload refused from its declarations; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Declared:
    """What an upload declares: its format and the bytes its tensors expand to."""

    kind: str  # "zip" (torch.save) or "safetensors"
    expanded_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors' __metadata__


@lru_cache(maxsize=64)
def _expected_bytes(spec_json: str) -> int:
    import torch

    from lipcore.models import build

    with torch.device("meta"):
        model = build(ExperimentSpec.model_validate_json(spec_json))
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def expected_bytes(spec: ExperimentSpec) -> int:
    """Bytes of the state dict (parameters and buffers, float32) of the network `spec` builds."""
    return _expected_bytes(spec.model_dump_json())


def bound_for(spec: ExperimentSpec) -> int:
    """The most bytes an upload for `spec` may declare (see the module doc)."""
    return DTYPE_ROOM * expected_bytes(spec) + SLACK_BYTES


def declared(data: bytes, name: str) -> Declared:
    """The format and declared expanded size of an upload, from its declarations only (ArchiveError: 422)."""
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        return _zip(data, name)
    if len(data) >= 9 and data[8:9] == b"{":
        return _safetensors(data, name)
    if data[:1] == b"\x80":
        raise ArchiveError(
            422,
            f"checkpoint: {name} is a legacy torch.save pickle, whose sizes cannot be checked before loading it; "
            "save it again with torch.save's default zip format (PyTorch >= 1.6) or as safetensors",
        )
    raise ArchiveError(422, f"checkpoint: {name} is neither a torch.save zip (model.ckpt) nor a safetensors file")


def _zip(data: bytes, name: str) -> Declared:
    try:
        entries = zipfile.ZipFile(io.BytesIO(data)).infolist()  # the central directory; nothing inflated
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, struct.error) as e:
        raise ArchiveError(422, f"checkpoint: {name} is not a readable zip ({e})") from None
    for entry in entries:
        if entry.compress_type not in ZIP_METHODS:
            raise ArchiveError(
                422,
                f"checkpoint: {name} entry {entry.filename!r} uses zip method {entry.compress_type}; "
                f"expected {' or '.join(ZIP_METHODS.values())}",
            )
    return Declared("zip", sum(entry.file_size for entry in entries))


def _safetensors(data: bytes, name: str) -> Declared:
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ArchiveError(422, f"checkpoint: {name} declares a {n}-byte header in a {len(data)}-byte file")
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError) as e:
        raise ArchiveError(
            422, f"checkpoint: {name} has an unreadable safetensors header ({type(e).__name__})"
        ) from None
    if not isinstance(header, dict):
        raise ArchiveError(422, f"checkpoint: {name} has a safetensors header that is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ArchiveError(422, f"checkpoint: {name} has safetensors metadata that is not a {{name: string}} map")
    total = 0
    for key, info in header.items():
        offsets: Any = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ArchiveError(422, f"checkpoint: {name} tensor {key!r} has no [begin, end] data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= len(data) - 8 - n:
            raise ArchiveError(
                422, f"checkpoint: {name} tensor {key!r} declares bytes {begin}..{end} beyond the file's data"
            )
        total += end - begin
    return Declared("safetensors", total, metadata)


def check_sizes(found: Declared, spec: ExperimentSpec, name: str, max_upload_bytes: int) -> None:
    """Refuse an upload whose declared tensors exceed the upload limit (413) or the spec's network (422)."""
    if found.expanded_bytes > max_upload_bytes:
        raise ArchiveError(
            413,
            f"checkpoint: {name} declares {found.expanded_bytes:,} bytes once decompressed, over "
            f"LBDN_MAX_UPLOAD_BYTES ({max_upload_bytes:,}); refused before decompressing it",
        )
    bound = bound_for(spec)
    if found.expanded_bytes > bound:
        raise ArchiveError(
            422,
            f"checkpoint: {name} declares {found.expanded_bytes:,} bytes of tensors, but a {spec.run_name()} "
            f"network holds {expected_bytes(spec):,} bytes (at most {bound:,} accepted); refused before loading it",
        )
