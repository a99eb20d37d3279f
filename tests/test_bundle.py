"""Bundle round trips and clear errors (issue 2, item 9)."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from conftest import MODELS
from safetensors.torch import load_file, save_file

from defense import bundle as bundle_io
from defense import data
from defense.bundle import BundleError

NAMES = ["mnist-badnets", "mnist-blend", "mnist-sig", "mnist-wanet"]


@pytest.fixture(scope="module")
def test_images():
    return data.load_dataset("mnist5k").test.x[:128]


def _same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k  # bit for bit


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("as_zip", [False, True], ids=["dir", "zip"])
def test_round_trip(tmp_path, test_images, name, as_zip):
    original = bundle_io.load_bundle(MODELS / name)
    out = bundle_io.save_bundle(original, tmp_path / (f"{name}.zip" if as_zip else name))
    assert out.is_file() == as_zip
    again = bundle_io.load_bundle(out)
    _same_state(original.model, again.model)
    assert again.meta == original.meta
    assert again.trigger.kind == original.trigger.kind and again.trigger.params() == original.trigger.params()
    assert original.trigger.tensors().keys() == again.trigger.tensors().keys()
    for k, t in original.trigger.tensors().items():
        assert torch.equal(t, again.trigger.tensors()[k])
    with torch.no_grad():
        for x in (test_images, original.trigger.apply(test_images)):
            assert torch.equal(original.model(x).argmax(1), again.model(x).argmax(1))
            assert torch.equal(original.model(x), again.model(x))


def test_bundle_bytes_is_a_loadable_zip(tmp_path):
    original = bundle_io.load_bundle(MODELS / "mnist-blend")
    path = tmp_path / "download.zip"
    path.write_bytes(bundle_io.bundle_bytes(original, "download"))
    assert sorted(zipfile.ZipFile(path).namelist()) == ["meta.json", "model.safetensors", "trigger.safetensors"]
    _same_state(original.model, bundle_io.load_bundle(path).model)


def test_zip_of_a_folder_loads(tmp_path):
    """A bundle zipped with its top-level folder (what 'compress folder' makes) loads too."""
    path = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for f in (MODELS / "mnist-sig").iterdir():
            archive.write(f, f"mnist-sig/{f.name}")
        archive.writestr("mnist-sig/", "")
    b = bundle_io.load_bundle(path)
    assert b.meta["attack"]["kind"] == "sig"


def test_model_pt_state_dict_loads(tmp_path, badnets_copy):
    """A plain torch.save'd state dict is accepted (read with weights_only=True)."""
    state = load_file(badnets_copy / "model.safetensors")
    (badnets_copy / "model.safetensors").unlink()
    buf = io.BytesIO()
    torch.save({"state_dict": state}, buf)
    (badnets_copy / "model.pt").write_bytes(buf.getvalue())
    b = bundle_io.load_bundle(badnets_copy)
    for k, v in state.items():
        assert torch.equal(b.model.state_dict()[k], v)


def test_shipped_metas_are_valid():
    for name in NAMES:
        meta = json.loads((MODELS / name / "meta.json").read_text())
        assert bundle_io.validate_meta(meta) is meta


def test_wrong_shapes_list_the_offending_keys_and_shapes(badnets_copy):
    state = load_file(badnets_copy / "model.safetensors")
    state["net.fc1.weight"] = torch.zeros(64, 100)
    state["net.conv2.bias"] = torch.zeros(7)
    save_file(state, badnets_copy / "model.safetensors")
    with pytest.raises(BundleError) as err:
        bundle_io.load_bundle(badnets_copy)
    message = str(err.value)
    assert "net.fc1.weight: file [64, 100] vs model [64, 1568]" in message
    assert "net.conv2.bias: file [7] vs model [32]" in message


def test_missing_and_unexpected_keys_are_listed(badnets_copy):
    state = load_file(badnets_copy / "model.safetensors")
    del state["net.fc2.bias"]
    state["net.backdoor"] = torch.zeros(3)
    save_file(state, badnets_copy / "model.safetensors")
    with pytest.raises(BundleError, match=r"missing keys net\.fc2\.bias.*unexpected keys net\.backdoor"):
        bundle_io.load_bundle(badnets_copy)


def test_architecture_mismatch_is_explained(badnets_copy):
    meta = json.loads((badnets_copy / "meta.json").read_text())
    meta["arch_kwargs"] = {"width": 8}
    (badnets_copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="do not fit the architecture in meta.json"):
        bundle_io.load_bundle(badnets_copy)


def test_missing_bundle():
    with pytest.raises(BundleError, match="no bundle at"):
        bundle_io.load_bundle("/nonexistent/bundle")


def test_describe_attack(badnets_copy):
    b = bundle_io.load_bundle(badnets_copy)
    assert b.name == "mnist-badnets" and b.target.label == 0
    assert "3x3 checker patch" in b.describe_attack() and "10%" in b.describe_attack()
