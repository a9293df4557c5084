"""Base class of the direct parameterizations: effective weights computed from free parameters.

Sandwich, orthogonal, AOL, SLL and LLN layers never store the weights they apply; they derive them
(Cayley transforms, rescalings) from free parameters. In training mode that derivation runs on every
forward so gradients reach the parameters. In eval mode it runs once and is reused, and the cache is
keyed on the *identity, version and storage* of every parameter, so it is refreshed automatically
after an optimizer step, `load_state_dict`, `.to()` / `.double()` or any in-place write that
autograd sees. No "dummy forward" is ever needed, and a stale cache cannot serve an output.

One blind spot is PyTorch's own: writes through `param.data` bypass the version counter. Code that
edits parameters that way must call `invalidate_caches(model)` afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Reparameterized(nn.Module):
    """A layer whose forward uses `self.effective()`, the output of `self.reparameterize()`."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple[tuple[Tensor, ...], tuple[int, ...], tuple[Tensor, ...]] | None = None

    def reparameterize(self) -> tuple[Tensor, ...]:
        """Effective weights from the free parameters (differentiable)."""
        raise NotImplementedError

    def effective(self) -> tuple[Tensor, ...]:
        """The effective weights: fresh in training mode, cached (and detached) in eval mode."""
        if self.training:
            self._cache = None
            return self.reparameterize()
        params = tuple(self.parameters(recurse=False))
        cache = self._cache
        if cache is not None and self._cache_valid(cache, params):
            return cache[2]
        with torch.no_grad():
            value = self.reparameterize()
        # Holding detached views keeps the old storage alive, so a data_ptr match really means
        # "same storage" (no reuse of a freed address), and views share the version counter.
        self._cache = (tuple(p.detach() for p in params), tuple(p._version for p in params), value)
        return value

    @staticmethod
    def _cache_valid(cache: Any, params: tuple[Tensor, ...]) -> bool:
        refs, versions, _ = cache
        if len(refs) != len(params):
            return False
        for ref, version, p in zip(refs, versions, params):
            if (
                ref._version != version
                or ref.data_ptr() != p.data_ptr()
                or ref.dtype != p.dtype
                or ref.device != p.device
                or ref.shape != p.shape
            ):
                return False
        return True

    def invalidate(self) -> None:
        self._cache = None

    # Device/dtype moves and state-dict loads drop the cache eagerly, so no copy of the old
    # storage outlives them (the version checks above would catch them anyway).
    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:  # type: ignore[override]
        self._cache = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # deepcopy/pickle must not carry references to the source storage
        return state


def invalidate_caches(model: nn.Module) -> None:
    """Drop every eval-mode cache in `model` (only needed after writes through `param.data`)."""
    for module in model.modules():
        if isinstance(module, Reparameterized):
            module.invalidate()
