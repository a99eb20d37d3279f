"""The defender's own data and models at scale: clean-image uploads, launch data, BackdoorBench uploads in the
app, the fast ablation ground truth, and the bundled PreAct-ResNet-18 through every page."""

from __future__ import annotations

import io
import zipfile
from concurrent.futures import Future

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from test_app import APP, PAGES, open_app
from test_architectures import randomize_bn
from test_backdoorbench import backdoorbench_result, random_preact_state, synthetic_cifar

from defense import ablation, metrics, models
from defense.cleandata import read_clean_upload
from defense.data import DataError, TensorData
from defense.neurons import neuron_map


def npz(x, y) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def folder_zip(n_per_class: int = 6, classes=("0", "3"), size=(20, 20), top: str | None = "mine") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for c in classes:
            for i in range(n_per_class):
                pic = io.BytesIO()
                Image.new("RGB", size, (10 * i, 50, 90)).save(pic, "PNG")
                z.writestr(f"{top + '/' if top else ''}{c}/{i}.png", pic.getvalue())
    return buf.getvalue()


# ---------------------------------------------------------------- clean-image uploads (library)


def test_npz_channels_last_uint8_and_channels_first_floats():
    x = np.random.default_rng(0).integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
    clean = read_clean_upload("c.npz", npz(x, np.arange(12) % 10), [1, 28, 28], 10)
    assert clean.x.shape == (12, 1, 28, 28) and torch.equal(clean.x[:, 0] * 255, torch.from_numpy(x[..., 0]).float())
    clean = read_clean_upload("c.npz", npz(x.transpose(0, 3, 1, 2) / 255.0, np.zeros(12, int)), [1, 28, 28], 10)
    assert clean.x.dtype == torch.float32 and clean.y.tolist() == [0] * 12


def test_imagefolder_zip_keeps_numbered_folders_as_labels_and_resizes():
    clean = read_clean_upload("mine.zip", folder_zip(), [1, 28, 28], 10)
    assert clean.x.shape == (12, 1, 28, 28) and sorted(set(clean.y.tolist())) == [0, 3]
    clean = read_clean_upload("mine.zip", folder_zip(classes=("cat", "dog"), top=None), [3, 32, 32], 10)
    assert clean.x.shape == (12, 3, 32, 32) and sorted(set(clean.y.tolist())) == [0, 1]


@pytest.mark.parametrize(
    "name, payload, message",
    [
        ("c.npz", npz(np.zeros((12, 3, 32, 32), np.uint8), np.zeros(12, int)), "the model takes [N, 1, 28, 28]"),
        ("c.npz", npz(np.zeros((12, 28, 28), np.uint8), np.full(12, 10)), "the model's classes are 0..9"),
        ("c.npz", npz(np.zeros((3, 28, 28), np.uint8), np.zeros(3, int)), "at least 10 are needed"),
        ("c.npz", npz(np.full((12, 28, 28), 2.0), np.zeros(12, int)), "pixel values in [0, 1]"),
        ("c.npz", npz(np.array([{"a": 1}] * 12, dtype=object), np.zeros(12, int)), "cannot be read"),
        ("c.zip", b"not a zip", "not a readable zip"),
        ("c.zip", folder_zip(top=None, classes=("a/b", "c")), "ImageFolder layout"),
        ("c.csv", b"1,2", "expected a .zip of class folders"),
    ],
)
def test_unfit_clean_uploads_say_why(name, payload, message):
    with pytest.raises(DataError) as err:
        read_clean_upload(name, payload, [1, 28, 28], 10)
    assert message in str(err.value)


# ---------------------------------------------------------------- fast ablation


@pytest.mark.parametrize("batch_images", [1, 40])  # one neuron per suffix call, and 40 / 16 = 2 at a time
@pytest.mark.parametrize("arch", ["preactresnet18", "small_cnn"])
def test_fx_suffix_ablation_equals_the_hook_version(arch, batch_images):
    torch.manual_seed(0)
    model = randomize_bn(models.build(arch, 10, (1, 28, 28), [0.1], [0.3], **({"width": 1} if "pre" in arch else {})))
    layers = neuron_map(model)
    test = TensorData(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    trig = TensorData(torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.int64))
    seen = []
    fast = ablation.ground_truth(
        model, layers, test, trig, progress=lambda d, t: seen.append((d, t)), batch_images=batch_images
    )
    ref = metrics.backdoor_ground_truth(model, layers, test, trig)
    for key in ("backdoor_effect", "clean_effect"):
        for name in layers:
            assert torch.allclose(fast[key][name], ref[key][name], atol=1e-5), (key, name)
    total = sum(nl.size for nl in layers.values())
    assert seen[-1] == (total, total) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))
    assert fast["images"] == 8


def test_truth_plan_fits_the_budget_with_fewer_images_before_sampling_neurons():
    assert ablation.plan(112, budget=80_000) == (256, None)  # a small model: every neuron on 256 images
    images, sample = ablation.plan(1_200, budget=80_000)
    assert (images, sample) == (66, None) and images * 1_200 <= 80_000
    images, sample = ablation.plan(50_000, budget=80_000)
    assert images == ablation.MIN_IMAGES and sample == 80_000 // ablation.MIN_IMAGES
    assert ablation.plan(1_200, budget=80_000) == ablation.plan(1_200, budget=80_000)  # by count, not by clock


def test_planned_truth_uses_the_planned_images_and_sample(monkeypatch):
    torch.manual_seed(0)
    model = models.build("small_cnn", 10, (1, 28, 28), [0.1], [0.3])
    layers = neuron_map(model)
    total = sum(nl.size for nl in layers.values())
    test = TensorData(torch.rand(300, 1, 28, 28), torch.randint(0, 10, (300,)))
    trig = TensorData(torch.rand(300, 1, 28, 28), torch.zeros(300, dtype=torch.int64))
    monkeypatch.setattr(ablation, "NEURON_IMAGES", 20 * ablation.MIN_IMAGES)  # room for 20 neurons on 64 images
    gt = ablation.ground_truth(model, layers, test, trig, max_images=None)
    assert gt["images"] == ablation.MIN_IMAGES
    assert int(torch.cat(list(gt["measured"].values())).sum()) == 20 and gt["sampled"] == pytest.approx(20 / total)


# ---------------------------------------------------------------- the app


def test_clean_images_uploaded_in_the_browser_become_the_clean_subset():
    at = open_app()
    key_before = at.session_state["_own_model"][0]
    x = (np.random.default_rng(1).random((20, 28, 28)) * 255).astype(np.uint8)
    at.file_uploader(key="w_clean_upload").upload("my-digits.npz", npz(x, np.arange(20) % 10)).run()
    at.button(key="w_clean_go").click().run()
    assert not at.exception and not at.error
    assert any("Clean subset: 20 images from my-digits.npz" in s.value for s in at.success)
    assert at.session_state["_own_model"][0] == key_before + "+clean:" + at.session_state["clean_upload"]["digest"]
    at.switch_page("pages/salience.py").run()
    assert not at.exception
    at.switch_page("pages/model.py").run()
    at.file_uploader(key="w_clean_upload").upload("bad.npz", npz(x[:3], np.zeros(3, int))).run()
    at.button(key="w_clean_go").click().run()
    assert any("at least 10 are needed" in e.value for e in at.error)


def test_a_backdoorbench_checkpoint_on_cifar10_named_at_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("BNL_DATA", str(synthetic_cifar(tmp_path / "cifar", n_train=40, n_test=20)))
    ckpt = io.BytesIO()
    torch.save(backdoorbench_result(random_preact_state(2), prefix="module."), ckpt)
    at = open_app()
    at.file_uploader(key="w_upload").upload("attack_result.pt", ckpt.getvalue()).run()
    assert at.checkbox(key="w_upload_bb").value  # recognised by its name
    assert at.selectbox(key="w_upload_bb_data").options == ["mnist5k", "cifar10"]
    at.selectbox(key="w_upload_bb_data").set_value("cifar10").run()
    at.button(key="w_upload_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "attack_result (uploaded)" in at.selectbox(key="w_model").options
    assert at.session_state["uploads"][at.session_state["model"]].meta["dataset"] == "cifar10"


def test_a_pickled_payload_uploaded_as_a_backdoorbench_file_is_refused(tmp_path):
    from test_backdoorbench import Payload

    result = backdoorbench_result(random_preact_state(2))
    result["clean_data"] = Payload(tmp_path / "pwned")
    buf = io.BytesIO()
    torch.save(result, buf)
    at = open_app()
    at.file_uploader(key="w_upload").upload("attack_result.pt", buf.getvalue()).run()
    at.button(key="w_upload_go").click().run()
    assert any("nothing in it was run" in e.value for e in at.error)
    assert not (tmp_path / "pwned").exists()


def test_the_bundled_preact_model_on_every_page(monkeypatch):
    """Every page renders on the 1,200-neuron model; the minutes-long background measurements are not started
    here (their speed is bench/'s job), so the pages show their waiting notes."""
    monkeypatch.setattr("ui.lab.background", lambda key, fn, *args, low=False: Future())
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["model"] = "mnist-preact-badnets"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert next(m.value for m in at.main.metric if m.label == "Neurons scored") == "1200"
    for page, title in PAGES.items():
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert title in [t.value for t in at.title], page
        if page == "salience":
            assert at.multiselect(key="w_salience_layers").value == ["net.layer4.1.conv2"]
            assert any("overview" in c.proto.id for c in at.get("plotly_chart"))
        if page == "threshold":  # 20 layers side by side were unreadable dots: the overview, then picked layers
            assert at.multiselect(key="w_threshold_layers").value == ["net.layer4.1.conv2"]
            assert any("threshold-overview" in c.proto.id for c in at.get("plotly_chart"))
