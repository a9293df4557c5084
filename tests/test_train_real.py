"""KWL-Sandwich-small learns from real CIFAR-10 JPEGs in a CPU-sized budget, with certificates.

3,000 real images (300 per class; 2,700 train, 300 held out), 4 epochs of the paper's recipe
(xent, peak lr 0.01, batches of 128): about 90 s on 2 cores. Measured: 28 % test accuracy
(chance is 10 %) and 10 % certified accuracy at 36/255.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lipcore.spec import ExperimentSpec
from lipcore.train import train
from tests.realdata import unpack_cifar_jpegs


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_cifar_jpegs(tmp_path_factory.mktemp("cifar-jpeg"), per_class=300)


def test_kwl_sandwich_learns_real_cifar10_with_certificates(cifar_slice: Path, tmp_path: Path) -> None:
    spec = ExperimentSpec(model="KWL", layer="Sandwich", scale="small", gamma=1.0, dataset="image_folder",
                          data_path=str(cifar_slice), loss="xent", epochs=4, train_batch_size=128,
                          test_batch_size=300, cert_acc=True)
    result = train(spec, tmp_path / "run", data_dir=tmp_path / "data", lipschitz_restarts=1)
    last = result.metrics[-1]
    assert last["test_acc"] >= 20.0, result.metrics  # at least twice chance after 84 steps
    assert last["cert_acc_36"] > 0.0, result.metrics
    assert last["cert_acc_36"] <= last["test_acc"]
    assert 0 < result.summary["lipschitz_lower_bound"] <= spec.gamma * (1 + 1e-4)
