"""SLLBlockFc's float64 check reuses the Gram sums of its reparameterisation: the same bound, bit for
bit, as the check computed from scratch, and never sums of other weights (lipcore.layers.sll)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from lipcore.layers.bounds import sll_bound
from lipcore.layers.sll import SLLBlockFc


def _full_check(block: SLLBlockFc) -> float:
    """The bound of the served (W, t) with its own W W^T (no kept sums)."""
    w, _, t = block.effective()
    q = block.q.detach().abs() + (0.0 if block.reference_epsilon else block.epsilon)
    return sll_bound(w, t, q, conv=False)


@pytest.mark.parametrize("reference_epsilon", [False, True])
@pytest.mark.parametrize(("features", "inner"), [(48, 64), (96, 40), (7, 7)])
def test_kept_sums_give_the_bound_bit_for_bit(features: int, inner: int, reference_epsilon: bool) -> None:
    torch.manual_seed(features * inner)
    block = SLLBlockFc(features, inner, reference_epsilon=reference_epsilon).double().eval()
    with torch.no_grad():
        block.q.mul_(torch.randn(inner, dtype=torch.float64))  # signs and a spread of weights
        block.q[0] = 0.0  # an inactive neuron (t = 0) drops out of both
    w, _, t = block.effective()
    assert block._kept_gram_sums(w, t) is not None
    assert block.lipschitz_bound() == _full_check(block)


def test_kept_sums_follow_the_weights() -> None:
    block = SLLBlockFc(32, 24).double().eval()
    block.lipschitz_bound()
    with torch.no_grad():
        block.q.mul_(3.0).add_(1.0)  # new q: a new reparameterisation, new sums
        block.weights[0].mul_(50.0)
    w, _, t = block.effective()
    assert block._kept_gram_sums(w, t) is not None
    assert block.lipschitz_bound() == _full_check(block)


def test_float32_training_and_copies_keep_nothing() -> None:
    block = SLLBlockFc(16, 12).eval()
    w, _, t = block.effective()  # float32: the check's float64 Gram is not this one
    assert block._kept_gram_sums(w, t) is None
    block64 = copy.deepcopy(block).double().train()
    w, _, t = block64.effective()  # training mode: nothing kept
    assert block64._kept_gram_sums(w, t) is None
    block64.eval()
    w, _, t = block64.effective()
    assert block64._kept_gram_sums(w, t) is not None
    for twin in (copy.deepcopy(block64), pickle.loads(pickle.dumps(block64))):
        assert twin._gram_sums is None
        assert twin.lipschitz_bound() == block64.lipschitz_bound()
