"""BackdoorBench import (attack_result.pt / defense_result.pt) and local data sets in torchvision's layouts."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error

from defense import bundle, data
from defense.cifar import write_cifar10
from defense.data import TensorData


def synthetic_cifar(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """A tiny folder in CIFAR-10's python layout: data_batch_1..5, test_batch, batches.meta."""
    gen = torch.Generator().manual_seed(seed)

    def part(n):
        return TensorData(torch.randint(0, 256, (n, 3, 32, 32), generator=gen) / 255.0, torch.arange(n) % 10)

    return write_cifar10(root, part(n_train), part(n_test))


def backdoorbench_result(model_state: dict, *, prefix: str = "", img_size=(32, 32, 3), clean_data="cifar10") -> dict:
    """An attack_result.pt dict in BackdoorBench's exact layout (utils/save_load_attack.py)."""

    def container(n, poisoned):
        indicator = np.zeros(n, dtype=np.float64)
        indicator[:poisoned] = 1
        return {
            "bd_data_container": {
                "save_folder_path": "./record/badnet/bd_train_dataset",
                "data_dict": {},
                "save_file_format": "png",
            },
            "getitem_all": True,
            "getitem_all_switch": False,
            "original_index_array": np.arange(n, dtype=np.int64),
            "poison_indicator": indicator,
            "save_folder_path": "./record/badnet/bd_train_dataset",
        }

    return {
        "model_name": "preactresnet18",
        "num_classes": 10,
        "model": {prefix + k: v for k, v in model_state.items()},
        "data_path": "./data",
        "img_size": img_size,
        "clean_data": clean_data,
        "bd_train": container(50, 5),
        "bd_test": container(20, 18),
    }


def random_preact_state(width: int, in_channels: int = 3, seed: int = 0) -> dict:
    from test_architectures import BBPreActResNet, randomize_bn

    torch.manual_seed(seed)
    if width == 64 and in_channels == 3:
        net = BBPreActResNet()  # BackdoorBench's own class: its keys, not ours
    else:
        from defense.preact import PreActResNet

        net = PreActResNet(num_classes=10, width=width, in_channels=in_channels)
    return {k: v.clone() for k, v in randomize_bn(net).state_dict().items()}


def test_attack_result_with_module_prefix_imports_bit_identically(tmp_path, cli):
    root = synthetic_cifar(tmp_path / "cifar")
    state = random_preact_state(64)
    ckpt = tmp_path / "attack_result.pt"
    torch.save(backdoorbench_result(state, prefix="module."), ckpt)
    out = tmp_path / "imported"
    code, stdout, stderr = cli(
        "import", ckpt, "--format", "backdoorbench", "--dataset", "cifar10", "--data-root", root,
        "--attack", "badnets", "--attack-params", '{"size": 3}', "--target", 0, "--out", out, "--json",
    )  # fmt: skip
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report == {"out": str(out), "architecture": "preactresnet18", "neurons": 4800}
    b = bundle.load_bundle(out)
    loaded = b.model.net.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) and loaded[k].dtype == state[k].dtype for k in state)
    meta = b.meta
    assert meta["normalization"] == {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261]}
    assert meta["arch_kwargs"] == {"width": 64} and meta["input_shape"] == [3, 32, 32]
    assert meta["attack"]["poison_rate"] == 0.1 and meta["imported_from"]["model_name"] == "preactresnet18"
    assert 0 <= meta["clean_acc"] <= 1 and 0 <= meta["asr"] <= 1


def test_defense_result_on_the_embedded_digits(tmp_path, cli):
    """defense_result.pt holds only model_name, num_classes and model; shape and normalization from --dataset."""
    state = random_preact_state(8, in_channels=1)
    ckpt = tmp_path / "defense_result.pt"
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "model": state}, ckpt)
    code, stdout, stderr = cli(
        "import", ckpt, "--dataset", "mnist5k", "--attack", "blend", "--target", 3, "--out", tmp_path / "b", "--json"
    )
    assert code == 0, stderr
    assert json.loads(stdout)["neurons"] == 600
    meta = bundle.load_bundle(tmp_path / "b").meta
    assert meta["normalization"] == {"mean": [0.5], "std": [0.5]} and meta["input_shape"] == [1, 28, 28]


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_payload_is_refused_and_nothing_runs(tmp_path, cli):
    marker = tmp_path / "pwned"
    result = backdoorbench_result(random_preact_state(4))
    result["bd_train"]["bd_data_container"]["data_dict"] = {"0": Payload(marker)}
    ckpt = tmp_path / "attack_result.pt"
    torch.save(result, ckpt)
    pickle.loads(pickle.dumps(Payload(tmp_path / "check")))  # the payload is live: unpickling it makes a file
    assert (tmp_path / "check").exists()
    code, _, stderr = cli(
        "import", ckpt, "--dataset", "mnist5k", "--attack", "badnets", "--target", 0, "--out", tmp_path / "b"
    )
    message = assert_clean_error(code, stderr)
    assert "refused" in message and "nothing in it was run" in message
    assert not marker.exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda r: r.update(model_name="vgg19_bn"), "model_name 'vgg19_bn' is not supported"),
        (lambda r: r["model"].pop("linear.weight"), "no conv1.weight / linear.weight"),
        (lambda r: r["model"].pop("layer1.0.bn1.weight"), "missing keys layer1.0.bn1.weight"),
        (lambda r: r.update(num_classes=43), "num_classes 43 does not match"),
        (lambda r: r.update(img_size=(28, 28, 1)), "1 channel(s) but the first conv takes 3"),
        (lambda r: r.update(model=[1, 2]), "not a BackdoorBench result"),
    ],
)
def test_malformed_checkpoints_are_one_line_errors(tmp_path, cli, change, expected):
    result = backdoorbench_result(random_preact_state(4))
    change(result)
    torch.save(result, tmp_path / "r.pt")
    code, _, stderr = cli(
        "import",
        tmp_path / "r.pt",
        "--dataset",
        "mnist5k",
        "--attack",
        "badnets",
        "--target",
        0,
        "--out",
        tmp_path / "b",
    )
    assert expected in assert_clean_error(code, stderr)


def test_synthetic_cifar10_folder_loads_exactly_and_a_broken_one_is_named(tmp_path):
    root = synthetic_cifar(tmp_path / "c", n_train=30, n_test=10)
    splits = data.load_dataset("cifar10", root)
    assert len(splits.train) == 30 and len(splits.test) == 10 and splits.input_shape == [3, 32, 32]
    gen = torch.Generator().manual_seed(0)
    expected = torch.randint(0, 256, (30, 3, 32, 32), generator=gen) / 255.0
    assert torch.equal(splits.train.x, expected)  # the layout round-trips pixel for pixel
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match="data_batch_3 is missing"):
        data.load_dataset("cifar10", root)


def test_train_and_evaluate_through_the_cli_on_a_synthetic_cifar10_and_an_imagefolder(tmp_path, cli):
    from PIL import Image

    root = synthetic_cifar(tmp_path / "c", n_train=40, n_test=10)
    code, stdout, stderr = cli(
        "train", "--dataset", "cifar10", "--data-root", root, "--arch", "preactresnet18",
        "--arch-kwargs", '{"width": 2}', "--attack", "badnets", "--epochs", "1", "--out", tmp_path / "m", "--quiet",
    )  # fmt: skip
    assert code == 0, stderr
    code, stdout, stderr = cli("evaluate", "--bundle", tmp_path / "m", "--data-root", root, "--json")
    assert code == 0, stderr and set(json.loads(stdout)) == {"clean_acc", "asr"}
    folder = tmp_path / "photos"
    for label in ("cat", "dog"):
        for i in range(12):
            (folder / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 12), (20 * i, 100 if label == "cat" else 200, 0)).save(folder / label / f"{i}.png")
    code, stdout, stderr = cli(
        "train", "--dataset", "imagefolder", "--data-root", folder, "--arch", "vgg11", "--arch-kwargs",
        '{"width": 2}', "--attack", "blend", "--epochs", "1", "--out", tmp_path / "v", "--quiet",
    )  # fmt: skip
    assert code == 0, stderr
    meta = bundle.load_bundle(tmp_path / "v").meta
    assert meta["architecture"] == "vgg11" and meta["num_classes"] == 2 and meta["input_shape"] == [3, 32, 32]
