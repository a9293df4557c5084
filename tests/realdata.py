"""The shared real CIFAR-10 JPEG archive, unpacked (a subset or all of it) into a test's temp folder."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from tests.conftest import CIFAR_JPEG_ARCHIVE

SHA256 = "bb033266dbb26aa71223ff120c0df4e7d3943dbd93b9e65984876854c6234931"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def unpack_cifar_jpegs(into: Path, per_class: int | None) -> Path:
    """Extract train/<class>/NNNN.jpg with NNNN < per_class (all when None) into `into`."""
    if not CIFAR_JPEG_ARCHIVE.is_file():
        pytest.fail(f"{CIFAR_JPEG_ARCHIVE} is missing: the real-data tests need ../shared/datasets")
    digest = hashlib.sha256(CIFAR_JPEG_ARCHIVE.read_bytes()).hexdigest()
    assert digest == SHA256, f"{CIFAR_JPEG_ARCHIVE}: unexpected sha256 {digest}"
    with tarfile.open(CIFAR_JPEG_ARCHIVE, "r:gz") as tf:
        for member in tf:
            if member.isfile() and (per_class is None or int(Path(member.name).stem) < per_class):
                tf.extract(member, into, filter="data")
    return into
