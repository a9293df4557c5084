"""Pillow decoding of image files into one uint8 array (N, 3, H, W), with the on-disk cache.

Images are decoded once per file list; training then indexes the in-memory array, so no Python
work per image remains on the training path. Every image must be a square of one of
`ALLOWED_SIZES` (the model families are defined for 32x32 and 64x64 inputs); grayscale, palette
and RGBA images are converted to RGB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, Union

import numpy as np
from PIL import Image

from lipcore.data.cache import ArrayCache, file_list_key

ALLOWED_SIZES = (32, 64)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CHUNK = 256  # files per task: large enough to amortise scheduling, small enough to balance
_T = TypeVar("_T")
StrPath = Union[str, "os.PathLike[str]"]


def decode_threads() -> int:
    """Decoding threads: env LBDN_DECODE_THREADS, else min(8, CPUs), and 1 on <= 2 CPUs.

    Pillow holds the GIL for most of the work on small images (~270 us per 32x32 JPEG, of which
    the codec is a fraction), so threads mostly overlap file I/O; on 2 CPUs they were measured
    ~10% slower than one thread.
    """
    env = os.environ.get("LBDN_DECODE_THREADS")
    if env:
        return max(1, int(env))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if cpus <= 2 else min(8, cpus)


def is_image_name(name: str) -> bool:
    """True for a visible file name ending in .png, .jpg or .jpeg (any case)."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _size_error(path: StrPath, got: tuple[int, int], expected: int | None) -> ValueError:
    allowed = " or ".join(f"{s}x{s}" for s in ALLOWED_SIZES)
    msg = f"{path}: image is {got[0]}x{got[1]} pixels; images must all be {allowed}"
    if expected is not None:
        msg += f" and all one size (expected {expected}x{expected}, the size of the first image)"
    return ValueError(msg)


def _map_chunks(fn: Callable[[int, Sequence[StrPath]], _T], paths: Sequence[StrPath]) -> list[_T]:
    """[fn(start, paths[start:start + _CHUNK]) for each chunk], in order, on the decoding threads."""
    starts = range(0, len(paths), _CHUNK)
    threads = min(decode_threads(), len(starts))
    if threads <= 1:
        return [fn(i, paths[i : i + _CHUNK]) for i in starts]
    # Threads, not processes: safe inside any host (API threads, Celery children, scripts without a
    # __main__ guard). The gain is small (see decode_threads); the cache makes decoding a one-off.
    with ThreadPoolExecutor(threads, thread_name_prefix="lbdn-decode") as pool:
        return list(pool.map(lambda i: fn(i, paths[i : i + _CHUNK]), starts))


def _read_sizes(start: int, paths: Sequence[StrPath]) -> list[tuple[int, int]]:
    sizes = []
    for path in paths:
        with Image.open(path) as im:  # reads the header only
            sizes.append(im.size)
    return sizes


def common_size(paths: Sequence[StrPath]) -> int:
    """Side length (pixels) shared by all images in `paths`, from their headers (no decoding).

    Raises ValueError naming the first file that is not square, not an allowed size, or differs
    from the first image.
    """
    if not paths:
        raise ValueError("no images to inspect")
    sizes = [s for chunk in _map_chunks(_read_sizes, paths) for s in chunk]
    first = sizes[0]
    if first[0] != first[1] or first[0] not in ALLOWED_SIZES:
        raise _size_error(paths[0], first, None)
    for path, size in zip(paths, sizes, strict=True):
        if size != first:
            raise _size_error(path, size, first[0])
    return first[0]


def _decode_into(out: np.ndarray, paths: Sequence[StrPath]) -> None:
    size = out.shape[-1]
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            if im.size != (size, size):
                raise _size_error(path, im.size, size)
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            out[i] = np.asarray(rgb).transpose(2, 0, 1)


def decode_files(paths: Sequence[StrPath], size: int) -> np.ndarray:
    """Decode `paths` in order into uint8 (N, 3, size, size), RGB; ValueError on a wrong size."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)  # filled in place: no 2nd copy
    _map_chunks(lambda start, chunk: _decode_into(out[start : start + len(chunk)], chunk), paths)
    return out


def entry_name(tag: str, root: Path, rel_paths: Sequence[str]) -> str:
    """Cache entry name for files `root/rel`: `<tag>-<hash of relative paths, sizes, mtimes>`."""
    return f"{tag}-{file_list_key(root, rel_paths)}"


def cached_decode(cache: ArrayCache, name: str, paths: Sequence[StrPath], size: int | None = None) -> np.ndarray:
    """`decode_files(paths)` through `cache`: uint8 (N, 3, S, S), decoded only on a cache miss.

    `name` comes from `entry_name`. `size` None means "whatever the images share": the first
    image's size, if allowed, and every other image must match it.
    """
    array = cache.load_array(name)
    if array is not None and array.ndim == 4 and array.shape[:2] == (len(paths), 3):
        if size is None or array.shape[2:] == (size, size):
            return array
    if size is None:
        size = cache.read_meta(name).get("size")
    if not isinstance(size, int):
        size = common_size(paths[:1])
    array = decode_files(paths, size)
    cache.save_array(name, array)
    cache.update_meta(name, size=size)  # every file was checked while decoding
    return array


def cached_size(cache: ArrayCache, name: str, paths: Sequence[StrPath]) -> int:
    """`common_size(paths)`, remembered in the entry's JSON so a second call reads no headers."""
    size = cache.read_meta(name).get("size")
    if not isinstance(size, int):
        size = common_size(paths)
        cache.update_meta(name, size=size)
    return size
