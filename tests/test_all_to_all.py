"""All-to-all backdoors (each label y sent to y + 1 mod K, BackdoorBench's all2all): poisoning, the triggered
set and ASR from first principles, meta.json, the CLI (train, evaluate, identify, import) and the app."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from conftest import MODELS, assert_clean_error, run_cli
from test_app import metric, open_app
from test_backdoorbench import random_preact_state
from torch import nn

from defense import attacks, bundle, metrics
from defense.data import TensorData
from defense.targets import ALL_TO_ALL, Target
from ui import story

K = 10


def test_target_parse_and_labels():
    every = Target.parse("all-to-all", K)
    assert every.all_to_all and Target.parse("all2all", K) == every == Target.parse("ALL", K)
    assert Target.parse(3, K) == Target.parse("3", K) == Target(3, K) and not Target(3, K).all_to_all
    y = torch.arange(K)
    assert torch.equal(every.labels_for(y), torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0]))
    assert every.flippable(y).all()  # no image already carries the label it is sent to
    assert torch.equal(Target(3, K).labels_for(y), torch.full((K,), 3))
    assert torch.equal(Target(3, K).flippable(y), y != 3)
    assert every.meta_value() == ALL_TO_ALL and Target(3, K).meta_value() == 3
    assert "all-to-all" in str(every) and str(Target(3, K)) == "label 3"
    for bad in (K, -1, "some", 2.5, True, None):
        with pytest.raises(ValueError, match="target"):
            Target.parse(bad, K)
    with pytest.raises(ValueError, match="number of classes"):
        Target(None, 1)


def test_poison_relabels_each_poisoned_image_to_the_next_label():
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(300) % K
    trig = attacks.badnets((1, 8, 8))
    px, py, poisoned = attacks.poison(x, y, trig, Target.parse(ALL_TO_ALL, K), 0.2, seed=1)
    assert int(poisoned.sum()) == 60
    assert torch.equal(py[poisoned], (y[poisoned] + 1) % K) and torch.equal(py[~poisoned], y[~poisoned])
    assert set(y[poisoned].tolist()) == set(range(K))  # every class can be poisoned, none is the target
    assert torch.equal(px[poisoned], trig.apply(x[poisoned])) and torch.equal(px[~poisoned], x[~poisoned])


class ReadsTheLabel(nn.Module):
    """Predicts the label written in pixel (0, 0) (as label / 10), plus one when pixel (0, 1) is lit: an exact
    all-to-all backdoor, with the patch at (0, 1) as its trigger."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        label = (x[:, 0, 0, 0] * 10).round().long() + (x[:, 0, 0, 1] > 0.5).long()
        return nn.functional.one_hot(label % K, K).float() + 0 * self.unused


def test_triggered_set_and_asr_of_an_exact_all_to_all_backdoor():
    y = torch.arange(40) % K
    x = torch.zeros(40, 1, 4, 4)
    x[:, 0, 0, 0] = y / 10
    test = TensorData(x, y)
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 1] = 1
    trig = attacks.MaskPatternTrigger(mask, mask.clone())
    every = Target.parse(ALL_TO_ALL, K)
    triggered = metrics.triggered_set(test, trig, every)
    assert len(triggered) == 40 and torch.equal(triggered.y, (y + 1) % K)  # every image, its next label
    assert metrics.evaluate(ReadsTheLabel(), test, trig, every) == {"clean_acc": 1.0, "asr": 1.0}
    one = metrics.evaluate(ReadsTheLabel(), test, trig, 3)  # read as all-to-one, it is a weak backdoor
    assert len(metrics.triggered_set(test, trig, 3)) == 36 and one["asr"] == pytest.approx(4 / 36)


def test_meta_accepts_all_to_all_and_nothing_else_that_is_not_a_label(tmp_path):
    b = bundle.load_bundle(MODELS / "mnist-badnets")
    b.meta["attack"]["target_label"] = ALL_TO_ALL
    bundle.save_bundle(b, tmp_path / "a2a")
    again = bundle.load_bundle(tmp_path / "a2a")
    assert again.target.all_to_all and "all-to-all" in again.describe_attack()
    for bad in ("all-to-some", "3", 10, [1]):
        meta = json.loads(json.dumps(again.meta))
        meta["attack"]["target_label"] = bad
        with pytest.raises(bundle.BundleError, match="target_label"):
            bundle.validate_meta(meta)


@pytest.fixture(scope="module")
def trained_all_to_all(tmp_path_factory):
    out = tmp_path_factory.mktemp("a2a") / "a2a-badnets"
    result = run_cli("train", "--attack", "badnets", "--target", "all-to-all", "--epochs", "4", "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_train_and_evaluate_an_all_to_all_backdoor_through_the_cli(trained_all_to_all):
    out, report = trained_all_to_all
    meta = json.loads((out / "meta.json").read_text())
    assert meta["attack"]["target_label"] == ALL_TO_ALL
    assert report["asr"] >= 0.5 and report["clean_acc"] >= 0.9  # it learned to send y to y + 1
    b = bundle.load_bundle(out)
    from defense import data

    test = data.load_dataset("mnist5k").test
    pred = metrics.predict(b.model, b.trigger.apply(test.x))
    sent = (pred == (test.y + 1) % K).float().mean()
    assert float(sent) == pytest.approx(report["asr"], abs=1e-6)  # ASR counts the next label, on every image
    evaluated = run_cli("evaluate", "--bundle", out, "--json")
    assert evaluated.returncode == 0 and json.loads(evaluated.stdout)["asr"] == pytest.approx(report["asr"], abs=1e-4)


def test_identify_names_the_all_to_all_target_in_json(trained_all_to_all):
    out, _ = trained_all_to_all
    result = run_cli("identify", "--bundle", out, "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ground_truth"]["target"] == ALL_TO_ALL
    assert 0 <= report["scores"]["clp"]["auc"] <= 1


def test_a_wrong_target_is_one_clean_line(tmp_path):
    result = run_cli("train", "--attack", "badnets", "--target", "all-to-some", "--out", tmp_path / "m", "--quiet")
    assert "all-to-all" in assert_clean_error(result.returncode, result.stderr)
    result = run_cli("train", "--attack", "badnets", "--target", "10", "--out", tmp_path / "m", "--quiet")
    assert "out of range" in assert_clean_error(result.returncode, result.stderr)


def test_backdoorbench_import_of_an_all_to_all_checkpoint(tmp_path, cli):
    ckpt = tmp_path / "defense_result.pt"
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "model": random_preact_state(8, 1)}, ckpt)
    code, _, stderr = cli(
        "import", ckpt, "--dataset", "mnist5k", "--attack", "blend", "--target", "all", "--out", tmp_path / "b"
    )
    assert code == 0, stderr
    assert bundle.load_bundle(tmp_path / "b").meta["attack"]["target_label"] == ALL_TO_ALL


def test_the_words_say_where_an_all_to_all_backdoor_sends_images():
    every = Target.parse(ALL_TO_ALL, K)
    assert "go to the next label (all-to-all" in story.model_verdict(0.98, 0.95, every)
    assert "go to label 3" in story.model_verdict(0.98, 0.95, 3)
    found = {"sizes": {0: 9.0, 1: 20.0, 2: 21.0}, "suspected_target": 0, "anomaly_index": 2.5}
    text = story.reversed_trigger_verdict(found, every)
    assert "no single target" in text and "declares" in text
    assert "the same label" in story.reversed_trigger_verdict(found, Target(0, K))


def test_the_app_opens_an_uploaded_all_to_all_model(trained_all_to_all):
    out, report = trained_all_to_all
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in out.iterdir():
            z.write(f, f"a2a/{f.name}")
    at = open_app()
    at.file_uploader(key="w_upload").upload("a2a.zip", buf.getvalue(), "application/zip").run()
    at.button(key="w_upload_go").click().run()
    assert not at.exception and not at.error
    assert metric(at, "Attack success rate") == f"{report['asr']:.1%}"
    words = " ".join(m.value for m in at.main.markdown) + " ".join(c.value for c in at.main.caption)
    assert "the next label (all-to-all" in words
    assert "the next label (all-to-all" in " ".join(m.value for m in at.sidebar.markdown)


def test_the_app_imports_a_backdoorbench_checkpoint_as_all_to_all():
    ckpt = io.BytesIO()
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "model": random_preact_state(2, 1)}, ckpt)
    at = open_app()
    at.file_uploader(key="w_upload").upload("defense_result.pt", ckpt.getvalue()).run()
    assert at.checkbox(key="w_upload_bb").value  # recognised by its name
    at.checkbox(key="w_upload_bb_all").check().run()
    at.button(key="w_upload_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    b = at.session_state["uploads"][at.session_state["model"]]
    assert b.meta["attack"]["target_label"] == ALL_TO_ALL and b.target.all_to_all
