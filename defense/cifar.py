"""CIFAR-10 in torchvision's python layout (``cifar-10-batches-py``), read without running pickled code.

The batches are pickles of plain dicts holding a uint8 ``data`` array [N, 3072] and a
``labels`` list. torchvision unpickles them freely after an md5 check, which would turn
away any folder but the original; here a restricted unpickler reads them instead: it
builds only dicts, lists, strings, numbers and numeric numpy arrays, and refuses every
other global, so a genuine download, a subset or a synthetic folder in the same layout
all load, and a hostile file runs nothing.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch


class CifarError(ValueError):
    """The folder is not CIFAR-10 in the python layout; defense.data reports it as a DataError."""


TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
MAX_BATCH_BYTES = 256 * 2**20  # an original batch is ~31 MB


class _ArraysOnly(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            if name == "_reconstruct":
                from numpy._core.multiarray import _reconstruct

                return _reconstruct
            if name == "scalar":
                from numpy._core.multiarray import scalar

                return scalar
            return getattr(np, name)
        raise pickle.UnpicklingError(f"'{module}.{name}' is not allowed")


def _read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    if not path.is_file():
        raise CifarError(f"CIFAR-10 at {path.parent.parent} is incomplete or corrupt: {path.name} is missing")
    if path.stat().st_size > MAX_BATCH_BYTES:
        raise CifarError(f"CIFAR-10 at {path.parent.parent} is incomplete or corrupt: {path.name} is too large")
    try:
        with path.open("rb") as f:
            entry = _ArraysOnly(f, encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - refusals and damaged pickles alike
        raise CifarError(
            f"CIFAR-10 at {path.parent.parent} is incomplete or corrupt: {path.name} could not be read "
            f"({type(err).__name__}: {err}); nothing in it was run"
        ) from None
    if not isinstance(entry, dict):
        raise CifarError(f"CIFAR-10 at {path.parent.parent} is incomplete or corrupt: {path.name} is not a dict")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    pixels, labels = entry.get("data"), entry.get("labels", entry.get("fine_labels"))
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        raise CifarError(
            f"CIFAR-10 at {path.parent.parent} is incomplete or corrupt: "
            f"{path.name}'s 'data' is not a uint8 [N, 3072] array"
        )
    if not isinstance(labels, list) or len(labels) != len(pixels) or not all(isinstance(v, int) for v in labels):
        raise CifarError(
            f"CIFAR-10 at {path.parent.parent} is incomplete or corrupt: {path.name}'s 'labels' "
            "is not one integer per image"
        )
    if labels and not all(0 <= v < 10 for v in labels):
        raise CifarError(f"CIFAR-10 at {path.parent.parent}: {path.name} has labels outside 0..9")
    return pixels, labels


def _convert(batches: list[tuple[np.ndarray, list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
    labels = [v for b in batches for v in b[1]]
    return torch.from_numpy(pixels).float() / 255.0, torch.as_tensor(labels, dtype=torch.int64)


def read_cifar10(root: Path):
    """((train x, train y), (test x, test y)): images float32 [N, 3, 32, 32] in [0, 1], labels int64."""
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir():
        raise CifarError(
            f"CIFAR-10 not found: expected the folder 'cifar-10-batches-py' (torchvision layout, "
            f"data_batch_1..5 and test_batch) inside {root}"
        )
    train = _convert([_read_batch(folder / name) for name in TRAIN_FILES])
    test = _convert([_read_batch(folder / TEST_FILE)])
    return train, test


def write_cifar10(root: Path, train, test) -> Path:
    """A folder in the same layout from two TensorData (for tests and for converting other data).

    Images in [0, 1], [N, 3, 32, 32]."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name, part):
        pixels = (part.x * 255).round().to(torch.uint8).reshape(len(part), -1).numpy()
        with (folder / name).open("wb") as f:
            pickle.dump({"batch_label": name, "data": pixels, "labels": part.y.tolist()}, f, protocol=4)

    chunks = torch.arange(len(train)).chunk(5)
    for name, index in zip(TRAIN_FILES, chunks, strict=True):
        dump(name, train.subset(index))
    dump(TEST_FILE, test)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": len(chunks[0]), "num_vis": 3072}, f, protocol=4)
    return root
