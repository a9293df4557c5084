"""Datasets as records: what the spec and the models need to know about one, declared once (torch-free).

A `DatasetCard` gives the input kind, shape and class count (or says they are read from the data, as
for a user's image folder), the per-channel mean and std, and any settings the paper's main.py
overrides for it. The spec fills in and checks its shape fields from the card; the code that reads
the files registers a loader against the card's name in its own module (lipcore.data's
`register_loader`). Adding a dataset is one module with its loader plus one record:

    register_dataset(DatasetCard("blobs", inputs="image", in_channels=3, img_size=32, num_classes=2,
                                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from lipcore.catalog.registry import Registry

Inputs = Literal["vector", "image"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset with fixed facts: input shape, outputs, mean, std."""

    in_channels: int
    img_size: int  # 0 for 1-D data (square_wave)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DatasetCard:
    """One dataset's facts. Shape fields are None when read from the data (`from_folder`: the user
    names it with `data_path`, and lipcore.data reads its shape and classes from the image headers).

    img_size: 0 for 1-D data. mean/std: per channel, in [0, 1] pixel units (None: computed from the
    training images); the std divides only with the spec's `normalized`, as in the paper.
    overrides: settings main.py replaces silently for this dataset (square_wave's batch sizes).
    """

    name: str
    inputs: Inputs
    in_channels: int | None = None
    img_size: int | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    from_folder: bool = False
    about: str = ""

    def __post_init__(self) -> None:
        shape = (self.in_channels, self.img_size, self.num_classes)
        if self.from_folder == (None not in shape):
            raise ValueError(f"dataset {self.name!r}: give in_channels, img_size and num_classes, or from_folder")

    def info(self) -> DatasetInfo | None:
        """The fixed facts, or None when shape or statistics are read from the data."""
        if self.in_channels is None or self.img_size is None or self.num_classes is None:
            return None
        if self.mean is None or self.std is None:
            return None
        return DatasetInfo(self.in_channels, self.img_size, self.num_classes, self.mean, self.std)

    def shape(self) -> dict[str, int]:
        """The spec fields this dataset fixes: in_channels, img_size, num_classes ({} if read from data)."""
        if self.in_channels is None or self.img_size is None or self.num_classes is None:
            return {}
        return {"in_channels": self.in_channels, "img_size": self.img_size, "num_classes": self.num_classes}

    def as_dict(self) -> dict[str, Any]:
        """What `GET /v1/catalog` lists: the name and the input kind."""
        return {"name": self.name, "inputs": self.inputs}


DATASETS: Registry[DatasetCard] = Registry("dataset")
# register (the same card again is a no-op, another card under a taken name an error), get (a ValueError
# naming the registered names otherwise), names and records (registration order)
register_dataset = DATASETS.register
get_dataset = DATASETS.get
dataset_names = DATASETS.names
datasets = DATASETS.records


# ---- the paper's datasets; means and stds are the paper's (dataset.py / evaluate.py) ---------------
SQUARE_WAVE = register_dataset(
    DatasetCard(
        "square_wave",
        "vector",
        1,
        0,
        1,
        (0.0,),
        (1.0,),
        # main.py forces these for the toy data (300 training points, 200 test points)
        overrides=MappingProxyType({"train_batch_size": 50, "test_batch_size": 200}),
        about="the 1-D square wave of Table 1",
    )
)
register_dataset(
    DatasetCard("cifar10", "image", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), about="CIFAR-10")
)
register_dataset(
    DatasetCard("cifar100", "image", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2675, 0.2565, 0.2761), about="CIFAR-100")
)
register_dataset(
    DatasetCard(
        "tiny_imagenet", "image", 3, 64, 200, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), about="Tiny ImageNet"
    )
)
# A user's own image-folder data: shape, classes, mean and std are read from the folder (lipcore.data).
IMAGE_FOLDER = register_dataset(
    DatasetCard("image_folder", "image", from_folder=True, about="your own folder of 32x32 or 64x64 images")
).name
