"""The engine from first principles: benign salience, AR, marking, preview, purification."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from defense import baselines, bundle, data, metrics, salience
from defense.masking import mark, preview, pruning_curve
from defense.neurons import prune
from defense.purify import Purification, PurifyConfig, ar_penalty, penalty
from defense.registry import DEFENSES, SCORES

ROOT = Path(__file__).resolve().parent.parent
BADNETS = ROOT / "assets" / "models" / "mnist-badnets"


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 4 * 4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.2, 0.2)
    x = torch.rand(32, 1, 4, 4)
    y = torch.randint(0, 3, (32,))
    return net.eval(), data.TensorData(x, y)


def test_neuron_map_pairs_conv_with_its_batchnorm_and_skips_the_output_layer(tiny):
    net, _ = tiny
    layers = salience.neuron_map(net)
    assert list(layers) == ["conv", "fc1"]
    assert layers["conv"].bn is net.bn and layers["conv"].output is net.bn
    assert layers["fc1"].output is net.fc1
    assert "fc2" in salience.neuron_map(net, include_output=True)


def test_benign_salience_matches_captum_gradient_x_activation(tiny):
    from captum.attr import LayerGradientXActivation

    net, clean = tiny
    scores, _ = salience.benign_salience(net, clean, batch_size=len(clean))  # one batch: no averaging
    loss = nn.CrossEntropyLoss(reduction="none")
    for name, module in (("conv", net.bn), ("fc1", net.fc1)):
        attr = LayerGradientXActivation(lambda x: loss(net(x), clean.y), module).attribute(clean.x)
        per_neuron = attr.sum(dim=(2, 3)) if attr.dim() == 4 else attr
        expected = -per_neuron.mean(0)  # −(∂L/∂y)·y with the batch-mean loss
        torch.testing.assert_close(scores.layers[name], expected.detach(), rtol=1e-4, atol=1e-6)


def test_benign_salience_predicts_the_loss_change_of_really_zeroing_a_neuron(tiny):
    net, clean = tiny
    with torch.no_grad():  # small outputs so that the first-order term dominates
        net.fc1.weight.mul_(0.05)
        net.fc1.bias.mul_(0.05)
    layers = salience.neuron_map(net)
    scores, _ = salience.benign_salience(net, clean, batch_size=len(clean))
    loss = nn.CrossEntropyLoss()
    with torch.no_grad():
        base = float(loss(net(clean.x), clean.y))
        real = []
        for i in range(layers["fc1"].size):
            m = torch.zeros(layers["fc1"].size, dtype=torch.bool)
            m[i] = True
            from defense.neurons import neuron_masking

            with neuron_masking(layers, {"fc1": m}):
                real.append(float(loss(net(clean.x), clean.y)) - base)
    real = torch.tensor(real)
    estimate = scores.layers["fc1"]
    assert torch.allclose(estimate, real, atol=0.1 * real.abs().max() + 1e-6)
    assert torch.corrcoef(torch.stack([estimate, real]))[0, 1] > 0.99


def test_running_salience_is_a_bias_corrected_moving_average(tiny):
    net, clean = tiny
    tracker = salience.BenignSalience(net, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    per_batch = []
    for xb, yb in clean.batches(8):
        net.zero_grad()
        loss(net(xb), yb).backward()
        per_batch.append(-(net.fc1.weight.grad * net.fc1.weight).detach().clone())
        tracker.update()
    weights = torch.tensor([0.9 ** (len(per_batch) - 1 - i) * 0.1 for i in range(len(per_batch))])
    expected = sum(w * s for w, s in zip(weights, per_batch)) / weights.sum()
    torch.testing.assert_close(tracker.per_parameter()["fc1.weight"], expected)


def test_ar_penalty_is_l1_below_the_knee_continuous_and_symmetric():
    w = torch.linspace(-0.9, 0.9, 19)
    assert torch.isclose(ar_penalty(w, 1.0), w.abs().sum())
    for knee in (1.0, 0.05):
        below = ar_penalty(torch.tensor([knee * (1 - 1e-6)]), knee)
        above = ar_penalty(torch.tensor([knee * (1 + 1e-6)]), knee)
        assert torch.isclose(below, above, rtol=1e-4)
        x = torch.tensor([-3 * knee, -knee, -0.3 * knee, 0.3 * knee, knee, 3 * knee], requires_grad=True)
        per = torch.stack([ar_penalty(v.view(1), knee) for v in x])
        assert torch.allclose(per[:3].flip(0), per[3:])
        per.sum().backward()
        # the gradient always points away from zero, so descent shrinks |w| on both sides
        assert (x.grad * x.detach().sign() > 0).all()
        # slope is continuous at the knee (1 on both sides) and grows beyond it
        assert abs(float(x.grad[4]) - 1) < 1e-5 and float(x.grad[5]) > 1


def _scores(values):
    return salience.NeuronScores("benign", {"a": torch.tensor(values, dtype=torch.float32)})


def test_mark_edge_cases_ratio_zero_one_and_ties():
    s = _scores([0.5, 0.1, 0.1, 0.1, 0.9])
    assert not mark(s, ratio=0.0)["a"].any()
    assert mark(s, ratio=1.0)["a"].all()
    two = mark(s, ratio=0.4)["a"]
    assert int(two.sum()) == 2 and not two[0] and not two[4]  # ties broken, still exactly two
    assert mark(s, threshold=0.0)["a"].tolist() == [False, True, True, True, False]
    assert mark(s, threshold=1.0)["a"].all()
    with pytest.raises(ValueError):
        mark(s, ratio=1.5)
    with pytest.raises(ValueError):
        mark(s)


def test_global_marking_counts_over_all_layers():
    s = salience.NeuronScores("magnitude", {"a": torch.arange(4.0), "b": torch.arange(6.0) * 100})
    m = mark(s, ratio=0.5, scope="global")
    assert sum(int(v.sum()) for v in m.values()) == 5


def test_identification_metrics_from_first_principles():
    suspicion = torch.tensor([0.9, 0.8, 0.1, 0.2])
    positive = torch.tensor([True, True, False, False])
    assert metrics.roc_auc(suspicion, positive) == 1.0
    assert metrics.roc_auc(-suspicion, positive) == 0.0
    assert metrics.precision_at_k(suspicion, positive) == 1.0
    fpr, tpr = metrics.roc_curve(suspicion, positive)
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1


def _area(fpr: list[float], tpr: list[float]) -> float:
    """Trapezoid area under a drawn curve."""
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(fpr, fpr[1:], tpr, tpr[1:]))


def test_roc_curve_with_ties_has_the_area_of_the_stated_auc():
    # the example: ten neurons tie at 2 (dead units tie like this), the two infected among them
    suspicion = torch.tensor([2.0, 2, 1, 2, 2, 2, 2, 2, 2, 2, 2, 1])
    positive = torch.zeros(12, dtype=torch.bool)
    positive[:2] = True
    fpr, tpr = metrics.roc_curve(suspicion, positive)
    assert metrics.roc_auc(suspicion, positive) == pytest.approx(0.6)
    assert _area(fpr, tpr) == pytest.approx(0.6)
    assert fpr == pytest.approx([0.0, 0.8, 1.0]) and tpr == pytest.approx([0.0, 1.0, 1.0])  # one point per score


@given(
    st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=40).filter(
        lambda rows: 0 < sum(p for _, p in rows) < len(rows)
    )
)
@settings(max_examples=200, deadline=None)
def test_roc_curve_area_equals_auc_for_any_ties(rows):
    suspicion = torch.tensor([float(s) for s, _ in rows])
    positive = torch.tensor([p for _, p in rows])
    fpr, tpr = metrics.roc_curve(suspicion, positive)
    assert _area(fpr, tpr) == pytest.approx(metrics.roc_auc(suspicion, positive), abs=1e-6)
    assert fpr[-1] == pytest.approx(1.0) and tpr[-1] == pytest.approx(1.0)
    assert len(fpr) == 1 + len(set(suspicion.tolist()))


@pytest.fixture(scope="module")
def badnets():
    b = bundle.load_bundle(BADNETS)
    splits = data.load_dataset("mnist5k")
    return b, splits, metrics.triggered_set(splits.test, b.trigger, b.target)


def test_preview_and_purification_never_touch_the_callers_model(badnets):
    b, splits, triggered = badnets
    before = {k: v.clone() for k, v in b.model.state_dict().items()}
    layers = salience.neuron_map(b.model)
    scores = salience.compute("benign", b.model, splits.clean, layers)
    masked = preview(b.model, layers, mark(scores, ratio=0.5), splits.test, triggered)
    unmasked = metrics.evaluate(b.model, splits.test, b.trigger, b.target)
    assert masked != unmasked
    Purification(b.model, splits.clean, splits.test, triggered, PurifyConfig(steps=3)).run()
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_pruning_curve_by_ratio_and_by_score_cut(badnets):
    b, splits, triggered = badnets
    layers = salience.neuron_map(b.model)
    scores = salience.compute("benign", b.model, splits.clean, layers)
    for by, marking in (("ratio", {"ratio": 0.3}), ("value", {"threshold": 0.3})):
        told = []
        curve = pruning_curve(
            b.model,
            layers,
            [scores],
            splits.test,
            triggered,
            ratios=[0.0, 0.3],
            by=by,
            progress=lambda *p, told=told: told.append(p),
        )
        assert told == [(1, 2), (2, 2)]
        row = curve[curve.ratio == 0.3].iloc[0]
        expected = preview(b.model, layers, mark(scores, **marking), splits.test, triggered)
        assert (row.clean_acc, row.asr) == (expected["clean_acc"], expected["asr"]), by
    with pytest.raises(ValueError, match="by must be"):
        pruning_curve(b.model, layers, [scores], splits.test, triggered, by="share")


def test_prune_zeroes_exactly_the_marked_neurons(badnets):
    b, splits, triggered = badnets
    import copy

    model = copy.deepcopy(b.model)
    layers = salience.neuron_map(model)
    scores = salience.compute("magnitude", model, None, layers)
    mask = mark(scores, ratio=0.25)
    with torch.no_grad():
        hooked = preview(model, layers, mask, splits.test, triggered)
    prune(layers, mask)
    assert metrics.evaluate(model, splits.test, None, 0, triggered=triggered) == hooked
    conv = layers["net.conv1"]
    assert conv.layer.weight[mask["net.conv1"]].abs().sum() == 0
    assert conv.layer.weight[~mask["net.conv1"]].abs().sum() > 0


def test_default_purification_lowers_asr_and_keeps_accuracy(badnets):
    b, splits, triggered = badnets
    result = Purification(b.model, splits.clean, splits.test, triggered, PurifyConfig(steps=150)).run()
    assert result["before"]["asr"] > 0.95
    assert result["after"]["asr"] < 0.2
    assert result["after"]["clean_acc"] > result["before"]["clean_acc"] - 0.05


def test_purification_is_deterministic_for_a_seed(badnets):
    b, splits, triggered = badnets
    runs = []
    for _ in range(2):
        p = Purification(b.model, splits.clean, splits.test, triggered, PurifyConfig(steps=20, eval_every=5, seed=3))
        p.run()
        runs.append(p)
    assert [h.get("asr") for h in runs[0].history] == [h.get("asr") for h in runs[1].history]
    for (k, v), w in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values()):
        assert torch.equal(v, w), k


def test_stop_ends_the_run_and_keeps_the_history(badnets):
    b, splits, triggered = badnets
    p = Purification(b.model, splits.clean, splits.test, triggered, PurifyConfig(steps=500))
    for record in p:
        if record["step"] == 7:
            p.stop()
    assert p.history[-1]["step"] == 7 and "asr" in p.history[-1]


@pytest.mark.parametrize("bad", [dict(ratio=1.5), dict(lam=-1), dict(lr=0), dict(steps=0), dict(reg="nope")])
def test_bad_settings_are_refused_with_a_message(bad):
    with pytest.raises(ValueError):
        PurifyConfig(**bad).validate()


def test_every_baseline_runs(badnets):
    b, splits, triggered = badnets
    for name in DEFENSES.names():
        run = baselines.make(name, b.model, splits.clean, splits.test, triggered, PurifyConfig(steps=2))
        result = run.run()
        assert 0 <= result["after"]["asr"] <= 1, name
    assert baselines.clp_mask(b.model)  # data-free: no clean data needed


def test_cli_purify_json_and_out(tmp_path):
    out = tmp_path / "purified"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "defense",
            "purify",
            "--bundle",
            str(BADNETS),
            "--steps",
            "40",
            "--json",
            "--quiet",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) >= {"before", "after", "steps", "seconds"} and report["steps"] == 40
    assert report["after"]["asr"] < report["before"]["asr"]
    evaluated = subprocess.run(
        [sys.executable, "-m", "defense", "evaluate", "--bundle", str(out), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert abs(json.loads(evaluated.stdout)["asr"] - report["after"]["asr"]) < 1e-6


def test_cli_salience_csv(tmp_path):
    import pandas as pd

    out = tmp_path / "s.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "defense", "salience", "--bundle", str(BADNETS), "--metric", "all", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,  # every score, the slow ones (ANP, RNP, unlearning, inversion) included
    )
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["layer", "neuron", *SCORES.names()]
    assert len(frame) == sum(nl.size for nl in salience.neuron_map(bundle.load_bundle(BADNETS).model).values())


def test_marked_norm_works_before_iterating_and_the_report_has_one_builder():
    from defense.data import TensorData
    from defense.results import purified_meta, run_report

    torch.manual_seed(0)
    clean = TensorData(torch.rand(16, 1, 4, 4), torch.arange(16) % 3)
    run = Purification(TinyNet(), clean, clean, clean, PurifyConfig(metric="magnitude", steps=3, eval_every=2))
    norm = run.marked_norm()  # before any step: the knees are set when the run is made
    records = list(run)
    assert records[0]["marked_norm"] == norm > 0
    report = run_report(run.history, run.config, context={"defense": "bs-ar"}, history=True)
    assert list(report)[:5] == ["defense", "before", "after", "steps", "seconds"]
    assert report["steps"] == 3 and report["before"] == {k: records[0][k] for k in ("clean_acc", "asr")}
    assert report["after"] == {k: records[-1][k] for k in ("clean_acc", "asr")}
    assert report["history"][0]["task_loss"] is None  # NaN is not JSON
    json.dumps(report, allow_nan=False)
    assert run_report(run.history, run.config) == {
        k: report[k] for k in ("before", "after", "steps", "seconds", "config")
    }
    assert run_report([], None, history=True)["before"] is None
    meta = purified_meta(
        {"name": "m", "attack": {"kind": "badnets"}},
        name="m-bs-ar",
        source_name="m",
        after=report["after"],
        config=run.config,
        defense="bs-ar",
    )
    assert meta["name"] == "m-bs-ar" and meta["purified_from"] == "m" and meta["purification"]["defense"] == "bs-ar"
    assert meta["purification"]["steps"] == 3 and meta["attack"] == {"kind": "badnets"}


def test_anchor_penalty_is_the_squared_distance_of_the_unmarked_entries_only(tiny):
    net, batch = tiny
    cfg = PurifyConfig(metric="magnitude", ratio=0.5, anchor=0.5, steps=1, distill=0.0)
    run = Purification(net, batch, batch, batch, cfg)
    assert float(run._anchor_penalty().detach()) == 0.0
    conv_mask = run.mask["conv"]
    assert conv_mask.any() and (~conv_mask).any()
    with torch.no_grad():
        run.model.conv.weight[conv_mask] += 1.0  # marked: not the anchor's business
        run.model.conv.weight[~conv_mask] += 0.1
        run.model.fc2.bias += 0.2  # not a neuron's parameter: always anchored
    unmarked_entries = int((~conv_mask).sum()) * net.conv.weight[0].numel()
    expected = unmarked_entries * 0.1**2 + net.fc2.bias.numel() * 0.2**2
    assert float(run._anchor_penalty().detach()) == pytest.approx(expected, rel=1e-5)


def test_anchor_keeps_the_unmarked_weights_nearer_their_start(tiny):
    net, batch = tiny

    def drift(anchor: float) -> tuple[float, float]:
        cfg = PurifyConfig(metric="magnitude", ratio=0.5, anchor=anchor, steps=30, lr=0.05, distill=0.0, augment=False)
        run = Purification(net, batch, batch, batch, cfg)
        run.run()
        m = run.mask["conv"]
        d = run.model.conv.weight.detach() - net.conv.weight.detach()
        return float(d[~m].norm()), float(d[m].norm())

    free_unmarked, free_marked = drift(0.0)
    held_unmarked, held_marked = drift(5.0)
    assert held_unmarked < 0.5 * free_unmarked
    assert held_marked > 0.5 * free_marked  # the penalty on the marked neurons still moves them


def test_the_penalty_step_never_carries_a_weight_past_zero_and_leaves_the_linear_slope_alone():
    lam, lr, knee = 0.03, 0.02, 0.05
    w = nn.Parameter(torch.tensor([0.0001, -0.01, 0.08, -0.4, 0.9]))  # below the knee, then 1.6×, 8×, 18× beyond it
    marked = [(w, torch.ones(5, dtype=torch.bool), knee)]
    Purification._add_penalty_grad(lam, ar_penalty(w, knee), marked, lr)
    slope = torch.where(w.abs() <= knee, torch.ones(5), torch.exp(w.abs() / knee - 1)).detach()
    exact = lam * slope * w.sign().detach()
    # below the knee and just beyond it: AR's own gradient, even where λ·lr exceeds |w| (L1's slope is never cut)
    assert torch.allclose(w.grad[:3], exact[:3])
    # far beyond it the exponential slope would step past zero: cut to |w| / lr, the step that lands on zero
    assert (exact[3:].abs() * lr > w.detach()[3:].abs()).all()
    assert torch.allclose(w.grad[3:], w.detach()[3:] / lr)
    for kind in ("l1", "l2"):  # never cut
        v = nn.Parameter(torch.tensor([0.0001, -0.5, 2.0]))
        Purification._add_penalty_grad(lam, penalty(kind, v), [(v, torch.ones(3, dtype=torch.bool), knee)], lr)
        expected = lam * (v.sign() if kind == "l1" else 2 * v).detach()
        assert torch.allclose(v.grad, expected)


def test_ar_on_a_heavy_tailed_layer_stays_finite(tiny):
    """A wide layer's largest weights sit far beyond AR's knee (2 × the tensor's RMS): found on a small CNN of
    width 32 trained here, where the default purification diverged at step 4. The limit keeps it finite."""
    net, batch = tiny
    with torch.no_grad():
        net.fc1.weight.mul_(0.01)
        net.fc1.weight[0, 0] = 0.5  # ~10× the knee: AR's slope there is e⁹, a first step of 4 at the defaults
    cfg = PurifyConfig(metric="magnitude", ratio=1.0, steps=20, distill=0.0, augment=False)
    run = Purification(net, batch, batch, batch, cfg)
    run.run()  # raised FloatingPointError ("training diverged") before the limit
    assert torch.isfinite(run.model.fc1.weight).all()
    assert abs(float(run.model.fc1.weight[0, 0].detach())) < 0.5  # and AR still shrinks it
