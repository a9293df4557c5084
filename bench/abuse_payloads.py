"""Hostile uploads and bodies for bench/abuse.py and the tests (tests/service/test_import_limits.py).

    from bench.abuse_payloads import zip_bomb
    body = zip_bomb(2 * 2**30)   # about 2 MB: a torch.save zip whose data/0 entry inflates to 2 GiB
    httpx.post(f"{url}/v1/models/import", files={"checkpoint": ("model.ckpt", body)},
               data={"spec": json.dumps({"model": "Toy", "layer": "Aol", "gamma": 5.0})})

Built in well under a second: one MiB of zeros is deflated once with a full flush (which resets the
compressor, so every further MiB deflates to the same bytes) and that block is repeated.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

CHUNK = 2**20


def _deflated_zeros(size: int) -> tuple[bytes, int]:
    """(raw deflate stream of `size` zero bytes, their CRC-32), `size` a multiple of CHUNK."""
    assert size % CHUNK == 0 and size > 0
    zeros = bytes(CHUNK)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == again  # a full flush leaves no history: each MiB deflates alike
    tail = c.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(size // CHUNK):  # CRC-32 of the zeros (about 1 s for 2 GiB)
        crc = zlib.crc32(zeros, crc)
    return block * (size // CHUNK) + tail, crc


def _entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def zip_bomb(size: int = 2 * 2**30, state_key: str = "body.0.weight") -> bytes:
    """A torch.save zip of {state_key: tensor} whose storage entry `data/0` declares and inflates to
    `size` bytes (deflated), the rest of the archive being a real torch.save's entries (stored)."""
    import torch

    assert size < 2**32, "sizes of 4 GiB and more need zip64 records, which this builder does not write"
    buf = io.BytesIO()
    torch.save({state_key: torch.zeros(1)}, buf)
    bomb, bomb_crc = _deflated_zeros(size)
    out, central = io.BytesIO(), io.BytesIO()
    for name, content in _entries(buf.getvalue()):
        raw, method, crc, usize = content, 0, zlib.crc32(content), len(content)
        if name.endswith("/data/0"):
            raw, method, crc, usize = bomb, 8, bomb_crc, size
        offset, encoded = out.tell(), name.encode()
        out.write(
            struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(raw), usize, len(encoded), 0)
        )
        out.write(encoded + raw)
        central.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(raw),
                usize,
                len(encoded),
                0,
                0,
                0,
                0,
                0,
                offset,
            )  # fmt: skip
            + encoded
        )
    n = len(_entries(buf.getvalue()))
    cd = central.getvalue()
    out.write(cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(cd), out.tell(), 0))
    return out.getvalue()


# ---- bodies of bench/abuse.py's probes ----------------------------------------------------------------
def with_metadata(path: Path, **changes: str) -> bytes:
    """A saved model.safetensors with some of its metadata fields replaced."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    return struct.pack("<Q", len(new)) + new + raw[8 + n :]


def npy(header: bytes) -> bytes:
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def png_bad_chunk() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + bytes(96) for _ in range(32)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"\x00\x01\x02\x03", b"x") + chunk(b"IDAT", idat)
