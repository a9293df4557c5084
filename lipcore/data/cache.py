"""On-disk cache of decoded images: one uint8 `.npy` array plus a small JSON of facts per file list.

Decoding tens of thousands of JPEGs takes seconds to minutes; loading the decoded array takes well
under a second. An entry is named by a hash of the file list (relative paths, sizes, mtimes), so
adding, replacing or touching an image makes a new entry instead of serving stale pixels. Arrays
are stored with `allow_pickle=False` both ways: the cache never executes anything it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CACHE_DIRNAME = ".lbdn-cache"
_FORMAT = 1  # bump when the layout of cached arrays changes, so old entries are ignored


def file_list_key(root: Path, rel_paths: Sequence[str]) -> str:
    """Hex digest identifying files `root/rel` (rel: posix paths) by name, size and mtime."""
    h = hashlib.sha256(f"lbdn-decode-v{_FORMAT}\n".encode())
    base = os.fspath(root)
    for rel in rel_paths:
        st = os.stat(os.path.join(base, rel))
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


class ArrayCache:
    """A folder of `<name>.npy` / `<name>.json` pairs; `directory=None` caches nothing.

    Writes are atomic (temporary file + rename), so a killed process or two concurrent loaders
    never leave a half-written entry. An unwritable folder only costs a warning: the data still
    loads, just without the speed-up next time.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def _path(self, name: str, suffix: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{name}{suffix}"

    def load_array(self, name: str) -> np.ndarray | None:
        path = self._path(name, ".npy")
        if path is None or not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:  # truncated or foreign file: decode again
            warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=2)
            return None

    def save_array(self, name: str, array: np.ndarray) -> None:
        self._write(name, ".npy", lambda f: np.save(f, array, allow_pickle=False))

    def read_meta(self, name: str) -> dict[str, Any]:
        path = self._path(name, ".json")
        if path is None or not path.is_file():
            return {}
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) and meta.get("format") == _FORMAT else {}

    def update_meta(self, name: str, **fields: Any) -> None:
        meta = {**self.read_meta(name), **fields, "format": _FORMAT}
        text = json.dumps(meta, indent=1, sort_keys=True).encode()
        self._write(name, ".json", lambda f: f.write(text))

    def _write(self, name: str, suffix: str, write: Any) -> None:
        path = self._path(name, suffix)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared data dir needs it readable
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            warnings.warn(f"could not write cache file {path}: {exc}", stacklevel=3)


def cache_for(data_dir: Path) -> ArrayCache:
    """The cache that lives under `<data_dir>/.lbdn-cache/`."""
    return ArrayCache(Path(data_dir) / CACHE_DIRNAME)
