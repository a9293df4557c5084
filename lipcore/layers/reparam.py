"""Base class of the direct parameterizations: effective weights computed from free parameters.

Sandwich, orthogonal, AOL, SLL and LLN layers never store the weights they apply; they derive them
(Cayley transforms, rescalings) from free parameters. In training mode that derivation runs on every
forward so gradients reach the parameters. In eval mode it runs once and is reused, together with
what a forward derives from those weights alone (`derived`: the real-block form of each circular
layer's per-frequency response), so an eval forward spends its time on the input only.

Why the eval cache cannot be stale: it keeps an exact copy of the raw parameters it was computed
from, and every eval-mode forward compares the live parameters with that copy (`torch.equal`, one
pass over the parameters, cheap next to the Cayley transforms it saves; bench/layers.py measures
it). Any write is seen, whatever path it took: optimizer steps (including fused Adam, which does not
bump the autograd version counter), writes through `param.data`, numpy views, `load_state_dict`,
`.to()` / `.double()`. A forward therefore always uses tensors of *one* reparameterisation, computed
from exactly the parameters the layer holds at that moment; layers must take every tensor their
forward needs (weights included) from `effective()` (or `derived()` of those), never mix in live
parameters.

The price is one extra copy of each reparameterised layer's parameters while it is in eval mode,
and the pass over them per forward: for a served float64 model that pass is a third of a 1-image
forward (bench/certify_forward.py). `check_caches_by_version(model)` is for a model nobody writes
to except through versioned paths (a certify process's private float64 copy): its caches are
checked by parameter identity, storage pointer and autograd version counter instead, O(1) per
parameter, and keep no copy. Ordinary in-place ops and `copy_` (also under `torch.no_grad`, as
`load_state_dict` does), optimizer steps (fused ones included: a global post-step hook bumps the
version counters they skip), `.to()` and parameter reassignment are all seen; writes through
`param.data` or numpy views are not, which is why this is opt-in.
`invalidate_caches(model)` frees the caches (never needed for correctness).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook


class _Cache:
    """One eval-mode reparameterisation and everything keyed to it (dropped together)."""

    __slots__ = ("stamp", "snapshot", "value", "derived")

    def __init__(self, params: tuple[Tensor, ...], snapshot: tuple[Tensor, ...] | None, value: tuple[Tensor, ...]):
        self.stamp = VersionStamp(params)
        self.snapshot = snapshot  # exact copies of the parameters (None: checked by version only)
        self.value = value
        self.derived: dict[tuple[int, Callable[[Tensor], Tensor]], Tensor] = {}


class VersionStamp:
    """Tensors as they are now, by identity, storage pointer and autograd version counter: `matches`
    holds while the same tensor objects are unwritten (every versioned in-place write bumps the
    counter; `param.data` and numpy views do not, see check_caches_by_version). The eval caches
    here and the float64 copies of lipcore.certify both check their sources this way."""

    __slots__ = ("tensors", "stamps")

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.tensors = tuple(tensors)
        self.stamps = self._now(self.tensors)

    @staticmethod
    def _now(tensors: Sequence[Tensor]) -> tuple[tuple[int, int], ...]:
        return tuple((t.data_ptr(), t._version) for t in tensors)

    def same_objects(self, live: Sequence[Tensor]) -> bool:
        return len(self.tensors) == len(live) and all(a is b for a, b in zip(self.tensors, live))

    def matches(self, live: Sequence[Tensor]) -> bool:
        return self.same_objects(live) and self.stamps == self._now(live)


class Reparameterized(nn.Module):
    """A layer whose forward uses `self.effective()`, the output of `self.reparameterize()`."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: _Cache | None = None
        self._check_versions = False  # see check_caches_by_version

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
        exact rewrite of `forward` built from lipcore.layers.ops (`circular`: "dft" or "conv" for FFT
        convolutions)."""
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
            return cache.value
        with torch.no_grad():
            snapshot = None if self._check_versions else tuple(p.detach().clone() for p in params)
            value = self.reparameterize()
        self._cache = _Cache(params, snapshot, value)
        return value

    def derived(self, m: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """fn(m). When m is one of the tensors the eval cache serves, fn(m) is computed once and kept
        beside it (dropped with it): the very tensor an uncached call would compute, so outputs are
        bit-identical. `fn` must be a pure function of m (a module-level function: it is the key)."""
        cache = self._cache
        if cache is None or self.training:
            return fn(m)
        for i, v in enumerate(cache.value):
            if v is m:
                out = cache.derived.get((i, fn))
                if out is None:
                    with torch.no_grad():
                        out = fn(m)
                    # (two threads may both compute it: equal values, either one is kept)
                    cache.derived[(i, fn)] = out
                return out
        return fn(m)

    def _cache_valid(self, cache: _Cache, params: tuple[Tensor, ...]) -> bool:
        if self._check_versions:
            return cache.stamp.matches(params)
        if not cache.stamp.same_objects(params):
            return False
        if cache.snapshot is None:
            return False
        for ref, p in zip(cache.snapshot, params):
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
        # a copy goes to a new owner, who has promised nothing about how it writes the parameters
        state["_check_versions"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_check_versions", False)  # (pickles of before the flag)
        super().__setstate__(state)


def invalidate_caches(model: nn.Module) -> None:
    """Drop every eval-mode cache in `model` to free its memory (never needed for correctness)."""
    for module in model.modules():
        if isinstance(module, Reparameterized):
            module.invalidate()


def check_caches_by_version(model: nn.Module, enabled: bool = True) -> None:
    """Check `model`'s eval caches by parameter identity, storage pointer and version counter
    instead of by value (see the module docstring): for a model whose owner writes its parameters
    only through versioned paths, never `param.data` or numpy views. Not carried by copies."""
    for module in model.modules():
        if isinstance(module, Reparameterized):
            module._check_versions = enabled
            module._cache = None


def _bump_versions(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    # Fused optimizer kernels write the parameters without bumping their autograd version counters;
    # bumping them here makes those steps visible like every other in-place write.
    for group in optimizer.param_groups:
        if group.get("fused"):
            for p in group["params"]:
                torch.autograd.graph.increment_version(p)


register_optimizer_step_post_hook(_bump_versions)
