"""``python -m defense train`` -> ``evaluate --json`` end to end, in real subprocesses."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_clean_error, run_cli
from safetensors.torch import load_file, save_file

from defense import bundle as bundle_io
from defense import data


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny-badnets"
    result = run_cli(
        "train",
        "--dataset",
        "mnist5k",
        "--attack",
        "badnets",
        "--target",
        "1",
        "--poison-rate",
        "0.1",
        "--epochs",
        "1",
        "--seed",
        "0",
        "--out",
        out,
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_train_writes_a_bundle(tiny_run):
    out, report = tiny_run
    assert report["out"] == str(out) and 0 <= report["clean_acc"] <= 1 and 0 <= report["asr"] <= 1
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors", "trigger.safetensors"]
    meta = json.loads((out / "meta.json").read_text())
    bundle_io.validate_meta(meta)
    assert meta["format_version"] == 1 and meta["architecture"] == "small_cnn" and meta["dataset"] == "mnist5k"
    assert meta["num_classes"] == 10 and meta["input_shape"] == [1, 28, 28] and meta["seed"] == 0
    assert meta["attack"] == {
        "kind": "badnets",
        "target_label": 1,
        "poison_rate": 0.1,
        "params": {"size": 3, "margin": 1},
    }
    assert meta["training"]["epochs"] == 1 and meta["clean_acc"] == report["clean_acc"]


def test_evaluate_json(tiny_run):
    out, report = tiny_run
    result = run_cli("evaluate", "--bundle", out, "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert set(scores) == {"clean_acc", "asr"} and all(0 <= v <= 1 for v in scores.values())
    assert scores["clean_acc"] == pytest.approx(report["clean_acc"], abs=1e-4)
    assert scores["clean_acc"] > 0.5  # one epoch already learns digits

    # ASR counts only the test images whose true label is not the target
    b = bundle_io.load_bundle(out)
    test = data.load_dataset("mnist5k").test
    keep = test.y != 1
    with torch.no_grad():
        hits = b.model(b.trigger.apply(test.x[keep])).argmax(1) == 1
    assert scores["asr"] == pytest.approx(float(hits.float().mean()), abs=1e-6)


def test_evaluate_text_and_zip(tiny_run, tmp_path, cli):
    """The same scores from the folder and from a .zip of it (in-process: a subprocess costs seconds)."""
    out, _ = tiny_run
    zipped = bundle_io.save_bundle(bundle_io.load_bundle(out), tmp_path / "tiny.zip")
    code_a, json_a, _ = cli("evaluate", "--bundle", out, "--json")
    code_b, json_b, _ = cli("evaluate", "--bundle", zipped, "--json")
    assert code_a == code_b == 0 and json.loads(json_a) == json.loads(json_b)
    code, text, _ = cli("evaluate", "--bundle", zipped)
    assert code == 0 and text.startswith("tiny-badnets: clean accuracy") and "attack success rate" in text


def _new_trigger(shape=(1, 28, 28), seed=2024_11_25):
    """A trigger none of the built-in attacks makes: a random 5x5 binary patch at a random place."""
    g = torch.Generator().manual_seed(seed)
    top, left = (int(v) for v in torch.randint(0, 28 - 5, (2,), generator=g))
    mask = torch.zeros(shape)
    mask[:, top : top + 5, left : left + 5] = 1
    pattern = (torch.rand(shape, generator=g) > 0.5).float()
    return mask, pattern


def test_train_clean_label_writes_it_in_meta_and_refuses_all_to_all(tmp_path):
    out = tmp_path / "cl"
    result = run_cli("train", "--attack", "blend", "--target", "3", "--clean-label", "--epochs", "1", "--out", out)
    assert result.returncode == 0, result.stderr
    b = bundle_io.load_bundle(out)
    assert b.meta["attack"]["clean_label"] is True and "clean-label" in b.describe_attack()
    refused = run_cli("train", "--attack", "blend", "--target", "all-to-all", "--clean-label", "--out", tmp_path / "x")
    assert "one target class" in assert_clean_error(refused.returncode, refused.stderr)
    for bad, message in (("yes", "true or false"), (True, "not 'all-to-all'")):
        meta = json.loads(json.dumps(b.meta))
        meta["attack"]["clean_label"] = bad
        if bad is True:
            meta["attack"]["target_label"] = "all-to-all"
        with pytest.raises(bundle_io.BundleError, match=message):
            bundle_io.validate_meta(meta)


def test_train_from_a_trigger_file_gets_its_backdoor(tmp_path, cli):
    """Three epochs (default 8, ~5 s on an idle machine) on a trigger we just made: the backdoor is learned."""
    mask, pattern = _new_trigger()
    save_file({"mask": mask, "pattern": pattern}, tmp_path / "new-trigger.safetensors")
    result = run_cli(
        "train",
        "--attack",
        "file",
        "--trigger-file",
        tmp_path / "new-trigger.safetensors",
        "--target",
        "4",
        "--epochs",
        "3",
        "--seed",
        "1",
        "--out",
        tmp_path / "file-bundle",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    stored = load_file(tmp_path / "file-bundle" / "trigger.safetensors")
    assert torch.equal(stored["mask"], mask) and torch.equal(stored["pattern"], pattern)
    meta = json.loads((tmp_path / "file-bundle" / "meta.json").read_text())
    assert meta["attack"]["kind"] == "file" and meta["attack"]["target_label"] == 4

    code, out, _ = cli("evaluate", "--bundle", tmp_path / "file-bundle", "--json")
    scores, report = json.loads(out), json.loads(result.stdout)
    assert code == 0 and scores["asr"] == pytest.approx(report["asr"], abs=1e-4)
    assert scores["asr"] > 0.9, scores
    assert scores["clean_acc"] > 0.9, scores


def test_train_from_a_trigger_file_of_the_wrong_shape(tmp_path, cli):
    save_file({"mask": torch.zeros(3, 32, 32), "pattern": torch.zeros(3, 32, 32)}, tmp_path / "rgb.safetensors")
    code, _, err = cli(
        "train",
        "--attack",
        "file",
        "--trigger-file",
        tmp_path / "rgb.safetensors",
        "--epochs",
        "1",
        "--out",
        tmp_path / "out",
    )
    message = assert_clean_error(code, err)
    assert "trigger shape [3, 32, 32] does not match the model's input [1, 28, 28]" in message
    assert not (tmp_path / "out").exists()


def test_errors_in_a_real_process_are_one_line():
    result = run_cli("purify", "--bundle", "assets/models/mnist-badnets", "--ratio", "1.5")
    assert "argument --ratio: must be in [0, 1], got 1.5" in assert_clean_error(result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1  # no usage block before it


def test_no_command_is_a_usage_error(cli):
    code, _, err = cli()
    assert_clean_error(code, err)


def test_purify_says_what_it_does_not_use_and_how_long_marking_took(cli):
    code, out, err = cli("purify", "--bundle", "assets/models/mnist-badnets", "--defense", "ft", "--ratio", "0.3",
                         "--steps", "2", "--json")  # fmt: skip
    assert code == 0, err
    assert "note: ft marks no neurons; --ratio not used" in err  # accepted, but not silently ignored
    report = json.loads(out)
    assert report["marking_seconds"] >= 0 and report["steps"] == 2
