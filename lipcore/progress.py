"""Progress reports of long-running lipcore work (training, evaluation), for terminals and workers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Where a run is after a unit of work; `epoch` and `step` are 1-based.

    Training: an epoch is a pass over the training data and a step one optimizer step.
    Evaluation: an "epoch" is one attack radius (eps) and a step one batch of inputs attacked.
    """

    epoch: int
    epochs: int
    step: int
    steps: int
    global_step: int
    total_steps: int
    loss: float | None  # training loss of the step; None in evaluation
    lr: float | None  # learning rate of the step; None in evaluation
    elapsed_s: float  # since this (possibly resumed) process started the work
    eta_s: float | None
