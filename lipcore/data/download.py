"""Opt-in download of the public datasets from their official URLs, checked by md5.

Nothing is ever downloaded unless `load_data(..., download=True)` asks for it. The real servers
cannot be reached from the test environment (no internet), so the official URLs and checksums are
untested there; tests run the same fetch / md5 / unpack path against a local file:// archive.
"""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    url: str
    md5: str
    folder: str  # what the archive unpacks to, under the data dir

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


SOURCES: dict[str, Source] = {
    "cifar10": Source(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
    ),
    "cifar100": Source(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
    ),
    "tiny_imagenet": Source(
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        "90528d7ca1a48142e341f4ef8d21d0de",
        "tiny-imagenet-200",
    ),
}


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(source: Source, dest: Path) -> None:
    import urllib.request  # only here: loading data never pulls in an HTTP client

    part = dest.with_name(dest.name + ".part")
    h = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(source.url, timeout=60) as response, open(part, "wb") as f:
        for block in iter(lambda: response.read(1 << 20), b""):
            h.update(block)
            f.write(block)
    if h.hexdigest() != source.md5:
        part.unlink(missing_ok=True)
        raise OSError(f"{source.url}: md5 {h.hexdigest()} does not match {source.md5}; not extracted")
    part.replace(dest)


def _extract(archive: Path, into: Path) -> None:
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():  # refuse entries that would land outside `into`
                target = (into / member).resolve()
                if not target.is_relative_to(into.resolve()):
                    raise OSError(f"{archive}: entry {member!r} points outside {into}")
            zf.extractall(into)
    else:
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                tf.extractall(into, filter="data")  # rejects links and paths leaving `into`
                return
            for info in tf.getmembers():
                target = (into / info.name).resolve()
                if not target.is_relative_to(into.resolve()) or info.issym() or info.islnk():
                    raise OSError(f"{archive}: entry {info.name!r} is a link or leaves {into}")
            tf.extractall(into)


def download(dataset: str, data_dir: Path) -> Path:
    """Fetch `dataset`'s archive into `data_dir`, verify its md5 and unpack it; returns the folder.

    An archive already present with the right checksum is unpacked without downloading again.
    """
    source = SOURCES[dataset]
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / source.filename
    if not (archive.is_file() and _md5(archive) == source.md5):
        _fetch(source, archive)
    _extract(archive, data_dir)
    return data_dir / source.folder
