"""Every file the CLI and the app open is hostile until checked (issue 5).

Each protection has a test that fails when the protection is removed: payload tests check
that the marker file was never created, archive tests use otherwise *valid* bundles (so
without the check they would load), size tests lower the limit on a legit bundle.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import make_corpus
import pytest
import torch
from conftest import MODELS, assert_clean_error, run_cli, tree
from safetensors.torch import load_file, save_file

from defense import bundle as bundle_io
from defense import models
from defense.bundle import BundleError


class Payload:
    """A 'checkpoint' whose unpickling runs a shell command (os.system via __reduce__)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def payload_bytes(marker: Path, torch_format: bool = True) -> bytes:
    state = {"net.conv1.weight": Payload(marker)}
    if not torch_format:
        return pickle.dumps(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def bundle_files(name: str = "mnist-badnets") -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in (MODELS / name).iterdir()}


def write_zip(path: Path, files: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


# ---------------------------------------------------------------- pickles


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch-save", "bare-pickle"])
def test_payload_is_live(tmp_path, torch_format):
    """Control: the payload really runs when unpickled without protection, so the tests below mean something."""
    marker = tmp_path / "pwned"
    try:
        torch.load(io.BytesIO(payload_bytes(marker, torch_format)), weights_only=False)
    except (
        RuntimeError
    ):  # a bare pickle is read as torch's legacy format: the payload runs, then the magic number fails
        pass
    assert marker.exists()


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch-save", "bare-pickle"])
@pytest.mark.parametrize("as_zip", [False, True], ids=["dir", "zip"])
def test_pickle_payload_as_model_pt_is_refused(tmp_path, badnets_copy, torch_format, as_zip):
    marker = tmp_path / "pwned"
    (badnets_copy / "model.safetensors").unlink()
    (badnets_copy / "model.pt").write_bytes(payload_bytes(marker, torch_format))
    target = (
        write_zip(tmp_path / "b.zip", {f.name: f.read_bytes() for f in badnets_copy.iterdir()})
        if as_zip
        else badnets_copy
    )
    with pytest.raises(BundleError, match=r"model\.pt was refused.*nothing in it was run"):
        bundle_io.load_bundle(target)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "trigger.safetensors"])
def test_pickle_payload_renamed_safetensors_is_refused(tmp_path, badnets_copy, name):
    marker = tmp_path / "pwned"
    (badnets_copy / name).write_bytes(payload_bytes(marker))
    with pytest.raises(BundleError, match=f"{name} is not a valid safetensors file"):
        bundle_io.load_bundle(badnets_copy)
    assert not marker.exists()


def test_pickle_payload_as_trigger_file_is_refused(tmp_path, cli):
    marker = tmp_path / "pwned"
    (tmp_path / "trigger.safetensors").write_bytes(payload_bytes(marker))
    code, _, err = cli(
        "train",
        "--attack",
        "file",
        "--trigger-file",
        tmp_path / "trigger.safetensors",
        "--epochs",
        "1",
        "--out",
        tmp_path / "out",
    )
    assert "not a readable safetensors file" in assert_clean_error(code, err)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_pickle_payload_through_the_cli_subprocess(tmp_path, badnets_copy):
    marker = tmp_path / "pwned"
    (badnets_copy / "model.safetensors").unlink()
    (badnets_copy / "model.pt").write_bytes(payload_bytes(marker))
    result = run_cli("evaluate", "--bundle", badnets_copy, "--json", cwd=tmp_path)
    assert "model.pt was refused" in assert_clean_error(result.returncode, result.stderr)
    assert result.stdout == "" and not marker.exists()


# ---------------------------------------------------------------- archives


@pytest.mark.parametrize("prefix", ["../", "../../", "sub/../../", "..\\", "/", "/tmp/"])
def test_zip_entries_climbing_out_are_refused(tmp_path, prefix):
    """The members form a valid bundle: without the check, it would load."""
    work = tmp_path / "deep" / "deeper"
    work.mkdir(parents=True)
    path = write_zip(work / "slip.zip", {prefix + name: data for name, data in bundle_files().items()})
    before = tree(tmp_path)
    with pytest.raises(BundleError, match="points outside the bundle"):
        bundle_io.load_bundle(path)
    assert tree(tmp_path) == before  # nothing extracted anywhere


def test_zip_slip_through_the_cli_writes_nothing(tmp_path):
    (tmp_path / "cwd").mkdir()
    path = write_zip(tmp_path / "slip.zip", {"../" + name: data for name, data in bundle_files().items()})
    before = tree(tmp_path)
    result = run_cli("evaluate", "--bundle", path, cwd=tmp_path / "cwd")
    assert "points outside the bundle" in assert_clean_error(result.returncode, result.stderr)
    assert tree(tmp_path) == before


def test_zip_bomb_is_refused(tmp_path):
    """A valid bundle plus 64 MiB of zeros that deflate to ~64 KB (1000:1)."""
    path = tmp_path / "bomb.zip"
    write_zip(path, bundle_files())
    with (
        zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive,
        archive.open("padding.bin", "w", force_zip64=True) as f,
    ):
        chunk = bytes(2**20)
        for _ in range(64):
            f.write(chunk)
    assert path.stat().st_size < 2**20
    with pytest.raises(BundleError, match="zip bomb"):
        bundle_io.load_bundle(path)


def test_member_claiming_to_be_huge_is_refused_before_reading():
    with pytest.raises(BundleError, match="would unpack to 2048 MiB; the limit is 256 MiB"):
        bundle_io.load_bundle(Path(make_corpus.__file__).parent / "zip_declares_huge_member.zip")


def test_oversized_member_is_refused(tmp_path, monkeypatch, badnets_copy):
    monkeypatch.setattr(bundle_io, "MAX_MEMBER_BYTES", 100_000)  # the weights are 425 KB
    path = write_zip(tmp_path / "big.zip", bundle_files(), zipfile.ZIP_STORED)
    with pytest.raises(BundleError, match="model.safetensors' would unpack to"):
        bundle_io.load_bundle(path)
    with pytest.raises(BundleError, match="model.safetensors is larger than"):
        bundle_io.load_bundle(badnets_copy)


def test_oversized_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_io, "MAX_TOTAL_BYTES", 300_000)
    path = write_zip(tmp_path / "big.zip", bundle_files())
    with pytest.raises(BundleError, match="would unpack to more than"):
        bundle_io.load_bundle(path)


def test_archive_with_too_many_entries_is_refused(tmp_path):
    path = write_zip(tmp_path / "many.zip", {**bundle_files(), **{f"junk/{i}.txt": b"x" for i in range(80)}})
    with pytest.raises(BundleError, match="declares 83 entries"):
        bundle_io.load_bundle(path)


def test_oversized_meta_json_is_refused(badnets_copy):
    meta = json.loads((badnets_copy / "meta.json").read_text())
    meta["notes"] = "x" * (2 * 2**20)
    (badnets_copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="meta.json is larger than 1 MiB"):
        bundle_io.load_bundle(badnets_copy)


def test_symlinks_in_a_bundle_folder_are_not_followed(tmp_path, badnets_copy):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(badnets_copy / "meta.json", outside / "meta.json")
    (badnets_copy / "meta.json").symlink_to(outside / "meta.json")
    with pytest.raises(BundleError, match="has no meta.json"):
        bundle_io.load_bundle(badnets_copy)


# ---------------------------------------------------------------- meta.json


def _edit_meta(folder: Path, change) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


META_CASES = {
    "not-json": (None, "meta.json is not valid JSON"),
    "missing-fields": (
        lambda m: [m.pop("architecture"), m.pop("normalization")],
        "missing 'architecture'; missing 'normalization'",
    ),
    "wrong-types": (
        lambda m: m.update(num_classes="10", attack=[]),
        "'num_classes' should be int, found str; 'attack' should be dict",
    ),
    "unknown-architecture": (lambda m: m.update(architecture="vgg99"), "unknown architecture 'vgg99'"),
    "arch-kwargs-unknown": (lambda m: m.update(arch_kwargs={"depth": 3}), "cannot be built"),
    "arch-kwargs-huge": (lambda m: m.update(arch_kwargs={"width": 10**9, "hidden": 10**9}), "cannot be built"),
    "input-shape-bad": (lambda m: m.update(input_shape=[1, 28]), "'input_shape' must be"),
    "target-out-of-range": (
        lambda m: m["attack"].update(target_label=10),
        "'attack.target_label' must be an integer class in [0, 9]",
    ),
    "negative-std": (lambda m: m["normalization"].update(std=[-1.0]), "'normalization.std' values must be positive"),
    "wrong-attack": (lambda m: m["attack"].update(kind="sleeper"), "'attack.kind' must be one of"),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_malformed_meta_is_refused(badnets_copy, case):
    change, message = META_CASES[case]
    if change is None:
        (badnets_copy / "meta.json").write_text('{"architecture": "small_cnn",')
    else:
        _edit_meta(badnets_copy, change)
    with pytest.raises(BundleError) as err:
        bundle_io.load_bundle(badnets_copy)
    assert message in str(err.value)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_degenerate_input_shape_is_refused_even_when_the_weights_fit(tmp_path):
    """small_cnn on 3x3 images has a 0-wide fc1: the weights 'fit' but the model cannot run."""
    meta = make_corpus.tiny_meta(input_shape=[1, 3, 3])
    model = models.build("small_cnn", 2, [1, 3, 3], [0.5], [0.25], **meta["arch_kwargs"])
    folder = tmp_path / "degenerate"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({**meta, "attack": {**meta["attack"], "kind": "sig", "params": {}}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    with pytest.raises(BundleError, match=r"cannot be built for input \[1, 3, 3\]"):
        bundle_io.load_bundle(folder)


def test_output_size_must_match_num_classes(tmp_path, badnets_copy):
    _edit_meta(badnets_copy, lambda m: m.update(num_classes=12))
    with pytest.raises(BundleError, match=r"net\.fc2\.weight: file \[10, 64\] vs model \[12, 64\]"):
        bundle_io.load_bundle(badnets_copy)


# ---------------------------------------------------------------- weights and triggers


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(badnets_copy, value):
    state = load_file(badnets_copy / "model.safetensors")
    state["net.fc1.weight"][3, 7] = value
    save_file(state, badnets_copy / "model.safetensors")
    with pytest.raises(BundleError, match=r"NaN or infinite values in net\.fc1\.weight"):
        bundle_io.load_bundle(badnets_copy)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_weights_of_the_wrong_kind_are_refused(badnets_copy, dtype):
    state = load_file(badnets_copy / "model.safetensors")
    state["net.fc2.weight"] = state["net.fc2.weight"].to(dtype)
    save_file(state, badnets_copy / "model.safetensors")
    with pytest.raises(BundleError, match=r"wrong kind of tensor .* in net\.fc2\.weight"):
        bundle_io.load_bundle(badnets_copy)


@pytest.mark.parametrize(
    "mask, pattern, message",
    [
        (
            torch.zeros(1, 32, 32),
            torch.zeros(1, 32, 32),
            r"trigger shape \[1, 32, 32\] does not match the model's input \[1, 28, 28\]",
        ),
        (torch.zeros(3, 28, 28), torch.zeros(3, 28, 28), "does not match the model's input"),
        (torch.full((1, 28, 28), 2.0), torch.zeros(1, 28, 28), r"mask values must lie in \[0, 1\]"),
        (torch.zeros(1, 28, 28), torch.full((1, 28, 28), -1.0), r"pattern values must lie in \[0, 1\]"),
        (torch.zeros(1, 28, 28), torch.full((1, 28, 28), float("nan")), "pattern holds NaN"),
    ],
)
def test_bad_trigger_tensors_are_refused(badnets_copy, mask, pattern, message):
    save_file({"mask": mask, "pattern": pattern}, badnets_copy / "trigger.safetensors")
    with pytest.raises(BundleError, match="trigger: .*" + message):
        bundle_io.load_bundle(badnets_copy)


def test_bad_wanet_flow_is_refused(tmp_path):
    folder = Path(shutil.copytree(MODELS / "mnist-wanet", tmp_path / "w"))
    save_file({"flow": torch.zeros(28, 28, 3)}, folder / "trigger.safetensors")
    with pytest.raises(BundleError, match="'flow' tensor of shape"):
        bundle_io.load_bundle(folder)


# ---------------------------------------------------------------- the CLI on hostile files

CORPUS = Path(make_corpus.__file__).parent


@pytest.mark.parametrize(
    "case",
    [
        "meta_not_json",
        "meta_unknown_architecture",
        "weights_wrong_shape",
        "weights_nan",
        "trigger_out_of_range",
        "zip_slip_parent",
        "zip_declares_huge_member",
        "weights_pickle_pt",
        "not_a_zip",
    ],
)
def test_cli_refuses_hostile_bundles_in_one_line(tmp_path, cli, monkeypatch, case):
    monkeypatch.setenv("BNL_CORPUS_MARKER", str(tmp_path / "pwned"))
    for command in (
        ["evaluate", "--bundle", CORPUS / f"{case}.zip", "--json"],
        ["salience", "--bundle", CORPUS / f"{case}.zip", "--out", tmp_path / "s.csv"],
        ["purify", "--bundle", CORPUS / f"{case}.zip", "--out", tmp_path / "p"],
    ):
        code, out, err = cli(*command)
        assert_clean_error(code, err)
        assert out == ""
    assert tree(tmp_path) == set()


def test_cli_refuses_a_bundle_that_does_not_fit_its_dataset(tmp_path, cli):
    """A well-formed RGB model claiming to be for mnist5k: refused before torch crashes on the shapes."""
    meta = {
        **json.loads((MODELS / "mnist-sig" / "meta.json").read_text()),
        "input_shape": [3, 28, 28],
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }
    model = models.build("small_cnn", 10, [3, 28, 28], [0.5] * 3, [0.25] * 3)
    from defense.attacks import SigTrigger

    bundle_io.save_bundle(bundle_io.Bundle(model, meta, SigTrigger()), tmp_path / "rgb")
    code, _, err = cli("evaluate", "--bundle", tmp_path / "rgb")
    assert "takes images [3, 28, 28], but dataset 'mnist5k' holds [1, 28, 28]" in assert_clean_error(code, err)


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "args, message",
    [
        (["purify", "--ratio", "1.5"], "--ratio: must be in [0, 1]"),
        (["purify", "--ratio", "-0.1"], "--ratio: must be in [0, 1]"),
        (["purify", "--ratio", "nan"], "--ratio: must be in [0, 1]"),
        (["purify", "--ratio", "half"], "--ratio: expected a number"),
        (["purify", "--lam", "-1"], "--lam: must be zero or positive"),
        (["purify", "--lam", "inf"], "must be zero or positive"),
        (["purify", "--lr", "-1"], "learning rate must be positive"),
        (["purify", "--lr", "0"], "learning rate must be positive"),
        (["purify", "--lr", "nan"], "learning rate must be positive"),
        (["purify", "--steps", "0"], "--steps: must be a positive integer"),
        (["purify", "--steps", "-5"], "--steps: must be a positive integer"),
        (["purify", "--steps", "1.5"], "--steps: expected an integer"),
        (["purify", "--seed", "-1"], "--seed: must be an integer in [0, 2^63)"),
        (["purify", "--clean-fraction", "0"], "clean fraction must be in (0, 1]"),
        (["purify", "--clean-fraction", "2"], "--clean-fraction: must be in [0, 1]"),
        (["purify", "--reg", "l3"], "--reg: invalid choice"),
        (["salience", "--clean-fraction", "0", "--out", "{tmp}/s.csv"], "clean fraction must be in (0, 1]"),
        (["salience", "--metric", "vibes", "--out", "{tmp}/s.csv"], "--metric: invalid choice"),
    ],
)
def test_purify_and_salience_parameters(cli, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = cli(args[0], "--bundle", MODELS / "mnist-badnets", *args[1:])
    assert message in assert_clean_error(code, err)
    assert out == "" and tree(tmp_path) == set()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "12"], "--target 12 is out of range: the dataset has classes 0..9"),
        (["--target", "-1"], "--target -1 is out of range"),
        (["--target", "two"], "--target: expected a class index"),
        (["--poison-rate", "1.5"], "--poison-rate: must be in [0, 1]"),
        (["--epochs", "0"], "--epochs: must be a positive integer"),
        (["--seed", str(2**64)], "--seed: must be an integer in [0, 2^63)"),
        (["--attack-params", "[1, 2]"], "--attack-params must be a JSON object"),
        (["--attack-params", "{not json"], "a JSON argument is malformed"),
        (["--attack-params", '{"size": 40}'], "trigger parameter 'size' must be an integer in [1, 28]"),
        (["--attack-params", '{"sise": 4}'], "unknown parameter(s) sise for attack 'badnets'"),
        (["--attack", "file"], "attack 'file' needs --trigger-file"),
        (["--attack", "file", "--trigger-file", "{tmp}/nope.safetensors"], "cannot read the trigger file"),
        (["--arch", "vgg"], "--arch: invalid choice"),
        (["--dataset", "cifar10"], "dataset 'cifar10' needs a local folder"),
        (["--dataset", "cifar10", "--data-root", "{tmp}"], "expected the folder 'cifar-10-batches-py'"),
        (["--dataset", "imagefolder", "--data-root", "{tmp}/none"], "image folder not found"),
    ],
)
def test_train_parameters(cli, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--attack" not in args:
        args = ["--attack", "badnets", *args]
    code, out, err = cli(
        "train",
        *args,
        "--epochs" if "--epochs" not in args else "--quiet",
        *(["1"] if "--epochs" not in args else []),
        "--out",
        tmp_path / "out",
    )
    assert message in assert_clean_error(code, err)
    assert not (tmp_path / "out").exists()


def test_train_on_a_data_folder_with_no_images(cli, tmp_path):
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    (tmp_path / "photos" / "dogs").mkdir(parents=True)
    code, _, err = cli(
        "train",
        "--dataset",
        "imagefolder",
        "--data-root",
        tmp_path / "photos",
        "--attack",
        "badnets",
        "--out",
        tmp_path / "out",
    )
    assert "no images found in" in assert_clean_error(code, err)


def test_unwritable_out_is_one_line(cli, tmp_path):
    (tmp_path / "file.txt").write_text("I am a file")
    code, _, err = cli(
        "salience",
        "--bundle",
        MODELS / "mnist-badnets",
        "--metric",
        "magnitude",
        "--out",
        tmp_path / "file.txt" / "scores.csv",
    )
    assert assert_clean_error(code, err)


def test_missing_bundle_is_one_line(cli, tmp_path):
    code, _, err = cli("evaluate", "--bundle", tmp_path / "nothing-here")
    assert "no bundle at" in assert_clean_error(code, err)


def test_empty_clean_subset_is_refused_by_the_library():
    from defense.data import TensorData
    from defense.metrics import triggered_set
    from defense.purify import Purification

    b = bundle_io.load_bundle(MODELS / "mnist-badnets")
    empty = TensorData(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64))
    test = TensorData(torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="clean subset is empty"):
        Purification(b.model, empty, test, triggered_set(test, b.trigger, b.target))
