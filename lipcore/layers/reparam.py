"""Base class of the direct parameterizations: effective weights computed from free parameters.

Sandwich, orthogonal, AOL, SLL and LLN layers never store the weights they apply; they derive them
(Cayley transforms, rescalings) from free parameters. In training mode that derivation runs on every
forward so gradients reach the parameters. In eval mode it runs once and is reused.

Why the eval cache cannot be stale: it keeps an exact copy of the raw parameters it was computed
from, and every eval-mode forward compares the live parameters with that copy (`torch.equal`, one
pass over the parameters, cheap next to the Cayley transforms it saves; bench/layers.py measures
it). Any write is seen, whatever path it took: optimizer steps (including fused Adam, which does not
bump the autograd version counter), writes through `param.data`, numpy views, `load_state_dict`,
`.to()` / `.double()`. A forward therefore always uses tensors of *one* reparameterisation, computed
from exactly the parameters the layer holds at that moment; layers must take every tensor their
forward needs (weights included) from `effective()`, never mix in live parameters.

The price is one extra copy of each reparameterised layer's parameters while it is in eval mode.
`invalidate_caches(model)` frees the caches (never needed for correctness).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Reparameterized(nn.Module):
    """A layer whose forward uses `self.effective()`, the output of `self.reparameterize()`."""

    def __init__(self) -> None:
        super().__init__()
        # (exact copy of the raw parameters, effective weights computed from them) or None
        self._cache: tuple[tuple[Tensor, ...], tuple[Tensor, ...]] | None = None

    def reparameterize(self) -> tuple[Tensor, ...]:
        """Effective weights from the free parameters (differentiable)."""
        raise NotImplementedError

    def lipschitz_bound(self) -> float:
        """Upper bound (float64, rounding included) on the l2 Lipschitz constant of this layer's
        forward, from the layer's input (before `scale`) to its output, computed from the exact
        tensors `effective()` serves. See lipcore.layers.bounds and lipcore.certify.verified_bound."""
        raise NotImplementedError(f"{type(self).__name__} has no verified Lipschitz bound")

    def export(self, circular: str = "dft") -> nn.Module:
        """This layer as standard torch operators with its effective weights frozen (float32), an
        exact rewrite of `forward` (lipcore.export; `circular`: "dft" or "conv" for FFT convolutions)."""
        raise TypeError(f"no standard-operator form for {type(self).__name__}")

    def paper_weight(self, previous: Any = None) -> tuple[Tensor | None, Any]:
        """(W, state): the weight matrix whose spectral norm the paper reports for this layer
        (Table 1; None where undefined), and what the next layer needs to form its own (`previous`
        is the state the layer before returned). See lipcore.evaluate.layer_spectral_norms."""
        return None, None

    def effective(self) -> tuple[Tensor, ...]:
        """The effective weights: fresh in training mode; in eval mode cached (detached) and reused
        while the parameters are bit-for-bit those the cache was computed from."""
        if self.training:
            self._cache = None
            return self.reparameterize()
        params = tuple(self.parameters(recurse=False))
        cache = self._cache
        if cache is not None and self._cache_valid(cache, params):
            return cache[1]
        with torch.no_grad():
            snapshot = tuple(p.detach().clone() for p in params)
            value = self.reparameterize()
        self._cache = (snapshot, value)
        return value

    @staticmethod
    def _cache_valid(cache: Any, params: tuple[Tensor, ...]) -> bool:
        snapshot, _ = cache
        if len(snapshot) != len(params):
            return False
        for ref, p in zip(snapshot, params):
            if ref.dtype != p.dtype or ref.device != p.device or ref.shape != p.shape:
                return False
            # torch.equal is False where either side holds NaN: a NaN parameter recomputes every
            # time, which is correct (and such a model is not certifiable anyway).
            if not torch.equal(ref, p.detach()):
                return False
        return True

    def invalidate(self) -> None:
        self._cache = None

    # Device/dtype moves and state-dict loads drop the cache eagerly, so no copy of the old
    # parameters outlives them (the comparison above would catch them anyway).
    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:  # type: ignore[override]
        self._cache = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # deepcopy/pickle need not carry the cache (it is recomputed on demand)
        return state


def invalidate_caches(model: nn.Module) -> None:
    """Drop every eval-mode cache in `model` to free its memory (never needed for correctness)."""
    for module in model.modules():
        if isinstance(module, Reparameterized):
            module.invalidate()
