"""The paper's training augmentation, applied to whole batches on the training device (kornia).

Per image, as in the paper's torchvision pipeline: RandomCrop(size, padding=4, reflect),
RandomHorizontalFlip(p=0.5), ColorJitter(brightness=0.1, contrast=(0.5, 2), saturation=(0.3, 2),
hue=0.02). kornia's `ColorJitter` uses torchvision's formulas and ranges; one difference remains:
the order of the four jitter steps is drawn once per batch, not once per image.

Parameters are drawn on the CPU from torch's global RNG (kornia's default), which the trainer
checkpoints, so a resumed run replays the same augmentations on any device.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch

PAD = 4
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.1, (0.5, 2.0), (0.3, 2.0), 0.02


def paper_augmentation(img_size: int) -> torch.nn.Module:
    """Module mapping float (B, 3, S, S) in [0, 1] to augmented float (B, 3, S, S) in [0, 1]."""
    return torch.nn.Sequential(
        # "slice" cropping takes exact pixels (like torchvision), not an interpolated warp.
        K.RandomCrop((img_size, img_size), padding=PAD, padding_mode="reflect", cropping_mode="slice"),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(brightness=BRIGHTNESS, contrast=CONTRAST, saturation=SATURATION, hue=HUE, p=1.0),
    )
