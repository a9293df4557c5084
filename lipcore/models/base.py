"""What every network of the paper shares: a gamma (the certified l2 bound) and an optional LLN head."""

from __future__ import annotations

from torch import Tensor, nn

from lipcore.layers import LinearNormalized


class LipschitzNet(nn.Module):
    """A network with an l2 Lipschitz bound `gamma` (None when unconstrained) from input to logits,
    or, when the last layer is an LLN head, from input to the head's input (the logit map is then
    bounded by gamma ||W||_2 only; certificates use the head's pair distances, lipcore.certify).

    Subclasses put `sqrt(gamma)` as the `scale` of the first and the last layer, as the paper does,
    and set `self.body`, the nn.Sequential that maps inputs to outputs.
    """

    body: nn.Sequential

    def __init__(self, gamma: float | None) -> None:
        super().__init__()
        self.gamma = None if gamma is None else float(gamma)

    @property
    def sqrt_gamma(self) -> float:
        return 1.0 if self.gamma is None else self.gamma**0.5

    @property
    def lln_head(self) -> LinearNormalized | None:
        last = self.body[-1]
        return last if isinstance(last, LinearNormalized) else None

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def body_of(model: nn.Module) -> nn.Sequential:
    """The nn.Sequential `body` of a lipcore network (every LipschitzNet has one), typed as such."""
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Sequential):
        raise TypeError(f"{type(model).__name__} has no nn.Sequential body")
    return body
