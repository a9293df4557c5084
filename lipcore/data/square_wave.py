"""The 1-D square-wave regression of the paper's Table 1 / Fig. 3.

Training inputs are 300 points uniform on [-2, 2]; test inputs are 200 evenly spaced points on
[-2, 2]. The target is 1 where x <= -1 or 0 < x <= 1, else 0. The paper generated the training
points once from torch's global RNG; here they come from a private generator seeded from
`spec.seed`, so each seed has its own fixed data set and the global RNG is left untouched.
"""

from __future__ import annotations

import torch

from lipcore.data.loaders import register_loader
from lipcore.data.seeds import generator

TRAIN_SIZE, TEST_SIZE = 300, 200


def square_wave_target(x: torch.Tensor) -> torch.Tensor:
    """Targets (same shape as x, float32): 1.0 where x <= -1 or 0 < x <= 1, else 0.0."""
    return ((x <= -1.0) | ((x > 0.0) & (x <= 1.0))).to(torch.float32)


def square_wave_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test), each float32 (n, 1): n = 300 train, 200 test."""
    x = 2 * (2 * torch.rand(TRAIN_SIZE, 1, generator=generator(seed, "square_wave")) - 1)
    xt = torch.linspace(-2.0, 2.0, TEST_SIZE).reshape(TEST_SIZE, 1)
    return x, square_wave_target(x), xt, square_wave_target(xt)


register_loader("square_wave")(lambda spec, data_dir: square_wave_data(spec.seed))
