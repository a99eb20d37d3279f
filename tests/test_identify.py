"""Identification: the new scores against first principles on tiny hand-built nets, both truths, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO, assert_clean_error, run_cli
from torch import nn

import defense.scores  # noqa: F401  (registers every score)
from defense import metrics, stability, truth
from defense.data import TensorData
from defense.neurons import NeuronScores, neuron_map
from defense.registry import SCORES
from defense.scores import anp, bs_magnitude, rnp, unlearn


class TwoUnit(nn.Module):
    """x (2 features) → hidden Linear(2, 2) → ReLU → out Linear(2, 2)."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 2)
        self.out = nn.Linear(2, 2)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.stack([y.float() * 2 - 1, torch.ones(n)], 1).view(n, 1, 1, 2)  # feature 0 says the label
    return TensorData(x, y)


def _net(distractor_weight: float):
    net = TwoUnit()
    with torch.no_grad():
        net.hidden.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))  # unit 0: label feature; unit 1: constant
        net.hidden.bias.zero_()
        net.out.weight.copy_(torch.tensor([[-2.0, distractor_weight], [2.0, -distractor_weight]]))
        net.out.bias.zero_()
    return net


def test_anp_mask_drops_the_neuron_that_hurts_and_keeps_the_one_the_task_needs():
    # unit 1 pushes every image towards class 0: the clean loss falls as its mask falls
    net, clean = _net(3.0), _data()
    layers = neuron_map(net)
    masks = anp.anp_masks(net, clean, layers, iterations=60, batch_size=32)["hidden"]
    assert masks[1] < 0.2 and masks[0] > 0.9, masks
    assert net.hidden.weight[0, 0] == 3.0  # the model is untouched
    # and with the adversary off (ε = 0) the same ordering comes from plain mask descent
    masks0 = anp.anp_masks(net, clean, layers, iterations=60, batch_size=32, eps=0.0)["hidden"]
    assert masks0[1] < masks0[0]


def test_unlearning_moves_the_used_neuron_and_not_the_one_without_gradient():
    net, clean = _net(1.0), _data()
    with torch.no_grad():  # unit 1 is dead (its pre-activation is −1 on every image): ReLU passes no gradient
        net.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    layers = neuron_map(net)
    after, _ = unlearn.unlearned_copy(net, clean, max_steps=20, stop_on_collapse=False)  # it collapses at once
    change = unlearn.weight_change(net, after, layers)["hidden"]
    assert change[0] > 0.01 and change[1] == 0, change
    after, steps = unlearn.unlearned_copy(net, clean, max_steps=30, stop_acc=0.0, stop_on_collapse=False)
    loss = nn.CrossEntropyLoss()
    with torch.no_grad():
        assert float(loss(after(clean.x), clean.y)) > float(loss(net(clean.x), clean.y))  # ascent: the loss rose
    assert steps == 30


def test_unlearning_stops_after_a_whole_pass_counted_on_each_batchs_own_outputs():
    # RNP's stop rule: accuracy over one pass of the clean data, each batch counted before its step; no extra
    # accuracy pass. A model already under the bar still takes the whole first pass (64 images / 16 = 4 steps)
    net, clean = _net(1.0), _data()
    _, steps = unlearn.unlearned_copy(net, clean, batch_size=16, stop_acc=1.0, max_steps=100)
    assert steps == 4
    # with the bar out of reach it runs to the step budget, mid-pass (30 is not a multiple of 4)
    _, steps = unlearn.unlearned_copy(net, clean, batch_size=16, stop_acc=-1.0, max_steps=30, stop_on_collapse=False)
    assert steps == 30


def test_unlearning_stops_once_a_pass_gives_every_image_one_label():
    # a collapsed model's accuracy is its one label's share (here half the images), which may never reach the
    # bar; ascent only pushes it further the same way, so the pass that shows the collapse ends the unlearning
    net, clean = _net(1.0), _data()
    with torch.no_grad():
        net.out.bias.copy_(torch.tensor([10.0, -10.0]))  # every image → class 0
    _, steps = unlearn.unlearned_copy(net, clean, batch_size=16, stop_acc=0.1, max_steps=100)
    assert steps == 4
    _, steps = unlearn.unlearned_copy(net, clean, batch_size=16, stop_acc=0.1, max_steps=100, stop_on_collapse=False)
    assert steps == 100


def test_rnp_recovery_drops_the_neuron_the_clean_task_has_no_use_for():
    # on a (frozen) model whose unit 1 pushes every image to class 1 (all of class 0 wrong), recovering the
    # clean loss through masks closes unit 1 and keeps unit 0, which carries the label
    net, clean = _net(-3.0), _data()
    masks = rnp.recovered_masks(net, clean, epochs=30, batch_size=32)["hidden"]
    assert masks[1] < 0.2 and masks[0] > 0.9, masks
    assert net.hidden.weight[0, 0] == 3.0 and net.out.weight[0, 1] == -3.0  # weights untouched
    # the whole score: unlearn a copy, recover masks on it; one value in [0, 1] per neuron, the model as it was
    scores = rnp.compute(net, clean)
    assert set(scores.layers) == set(neuron_map(net)) and all(
        ((v >= 0) & (v <= 1)).all() for v in scores.layers.values()
    )
    assert net.hidden.weight[0, 0] == 3.0 and SCORES["rnp"].low_is_suspect


def test_bs_magnitude_is_the_rank_difference():
    mag = NeuronScores("magnitude", {"a": torch.tensor([1.0, 3.0, 2.0, 2.0])})
    bs = NeuronScores("benign", {"a": torch.tensor([0.5, -1.0, 0.0, 2.0])})
    got = bs_magnitude.combine(mag, bs).layers["a"]
    # ranks / (n−1): magnitude [0, 1, 0.5, 0.5] (the tie shares 1.5/3), BS [2/3, 0, 1/3, 1]
    assert torch.allclose(got, torch.tensor([0 - 2 / 3, 1 - 0, 0.5 - 1 / 3, 0.5 - 1]))
    assert SCORES["bs-magnitude"].low_is_suspect is False


def test_tac_sees_only_the_neuron_the_trigger_drives():
    net = _net(0.0)
    with torch.no_grad():
        net.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    layers = neuron_map(net)
    x = torch.rand(10, 1, 1, 2) * torch.tensor([1.0, 0.0])  # feature 1 is zero on clean images
    xt = x + torch.tensor([0.0, 1.0])  # the trigger sets it to 1
    tac = truth.trigger_activated_change(net, layers, x, xt)["hidden"]
    assert tac[0] == 0 and tac[1] > 0


def test_margin_ground_truth_finds_the_backdoor_unit_and_agreement_is_reported():
    net = _net(0.0)
    with torch.no_grad():  # unit 1 fires on the trigger feature and votes for class 0
        net.hidden.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 5.0]]))
        net.out.weight.copy_(torch.tensor([[-2.0, 4.0], [2.0, -4.0]]))
    clean = _data()
    clean = TensorData(clean.x * torch.tensor([1.0, 0.0]), clean.y)
    trig = TensorData(clean.x + torch.tensor([0.0, 1.0]), torch.zeros(len(clean), dtype=torch.int64))
    layers = neuron_map(net)
    gt = metrics.backdoor_ground_truth(net, layers, clean, trig, infected_fraction=0.5)
    assert gt["infected"]["hidden"].tolist() == [False, True]
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    assert float(metrics.target_margin(logits, torch.tensor([0]))) == pytest.approx(1.5)
    tac = {"tac": truth.trigger_activated_change(net, layers, clean.x, trig.x)}
    tac["infected"] = metrics.top_fraction(tac["tac"], 0.5)
    agree = truth.agreement(gt, tac)
    assert agree["top_k_overlap"] == 1.0 and agree["tac_auc_vs_ablation"] == 1.0


def test_stability_ranks_and_spearman():
    a = NeuronScores("benign", {"l": torch.tensor([1.0, 2.0, 3.0])})
    b = NeuronScores("benign", {"l": torch.tensor([3.0, 2.0, 1.0])})
    s = stability.stability([a, a, b])
    assert s["spearman_min"] == pytest.approx(-1.0) and s["ranks"]["l"].shape == (3, 3)
    assert s["ranks"]["l"][:, 0].tolist() == [1.0, 0.5, 0.0]  # low BS = most suspect = rank 1


def test_per_sample_salience_mean_is_the_batch_first_order_term():
    net, clean = _net(1.0), _data(32)
    layers = neuron_map(net)
    per = stability.per_sample_salience(net, clean, layers, batch_size=32)["hidden"]
    est = stability.benign_salience_estimate(net, clean, layers, batch_size=32)  # one batch: the EMA is exact
    assert torch.allclose(per.mean(0), est.layers["hidden"], atol=1e-5)


def test_per_sample_mean_is_benign_salience_on_every_layer_of_a_preact_resnet():
    # pre-activation blocks: a neuron is its conv's output, BatchNorm comes before it (docs/METHOD.md, "Neurons")
    from defense import models

    torch.manual_seed(0)
    net = models.build("preactresnet18", 10, (1, 16, 16), [0.1], [0.3], width=2).eval()
    clean = TensorData(torch.rand(24, 1, 16, 16), torch.randint(0, 10, (24,)))
    layers = neuron_map(net)
    per = stability.per_sample_salience(net, clean, layers, batch_size=24)
    est = stability.benign_salience_estimate(net, clean, layers, batch_size=24)  # one batch: the EMA is exact
    assert len(layers) >= 17
    for name in layers:
        assert torch.allclose(per[name].mean(0), est.layers[name], atol=1e-6, rtol=1e-4), name


def test_hardest_images_share_counts_the_highest_loss_rows():
    per = torch.zeros(20, 3)
    per[0] = torch.tensor([4.0, -2.0, 1.0])  # the hardest image
    per[1:] = torch.tensor([0.01, 0.02, 0.03])  # 19 fitted images, a little each
    loss = torch.full((20,), 0.001)
    loss[0] = 2.0
    found = stability.hardest_images_share(per, loss, share=0.05)
    assert found["images"] == 1 and found["of"] == 20
    assert found["share"] == pytest.approx(7.0 / (7.0 + 19 * 0.06))
    assert found["spearman"] == pytest.approx(1.0)  # column sums ordered as the hardest row: 4.19 > 1.57 > -1.62


def test_one_mislabelled_image_carries_nearly_all_of_benign_salience():
    net, clean = _net(1.0), _data(20)
    with torch.no_grad():
        net.out.weight.mul_(5)  # margins of 10 and 50: every correctly labelled image is fitted (loss < 1e-4)
    clean.y[0] = 1 - clean.y[0]  # the model is sure and wrong on it: the only image with a real gradient
    found = stability.hardest_images_report(net, clean, share=0.05)
    assert found["images"] == 1
    assert found["share"] > 0.9 and found["spearman"] == pytest.approx(1.0)


def test_benign_median_is_the_median_of_each_images_own_first_order_term():
    net, clean = _net(1.0), _data(15, seed=3)
    terms = []
    for x, y in zip(clean.x, clean.y):  # one image at a time: its own loss, its own gradient
        h = net.hidden(x.view(1, -1))
        h.retain_grad()
        nn.functional.cross_entropy(net.out(torch.relu(h)), y.view(1)).backward()
        terms.append(-(h.grad * h).detach()[0])
    expected = torch.stack(terms).median(0).values
    got = SCORES["benign-median"].compute(net, clean, neuron_map(net)).layers["hidden"]
    assert torch.allclose(got, expected, atol=1e-6)


def test_one_mislabelled_image_flips_the_mean_of_benign_salience_but_not_its_median():
    net, clean = _net(1.0), _data(21)
    with torch.no_grad():
        net.out.weight.mul_(5)  # every correctly labelled image fitted
    layers = neuron_map(net)
    mean0 = SCORES["benign"].compute(net, clean, layers).layers["hidden"]
    median0 = SCORES["benign-median"].compute(net, clean, layers).layers["hidden"]
    clean.y[0] = 1 - clean.y[0]
    mean1 = SCORES["benign"].compute(net, clean, layers).layers["hidden"]
    median1 = SCORES["benign-median"].compute(net, clean, layers).layers["hidden"]
    assert mean0[1] > 0 > mean1[1]  # the constant unit: one image of 21 turns "needed" into "better without"
    assert torch.equal(median0, median1)


def test_cli_identify_json_and_bad_input(tmp_path):
    result = run_cli("identify", "--bundle", REPO / "assets" / "models" / "mnist-badnets", "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["scores"]) == set(SCORES.names())
    for q in report["scores"].values():
        assert 0 <= q["auc"] <= 1 and 0 <= q["precision_at_k"] <= 1
    inversion = report["scores"]["inversion"]  # Neural Cleanse's finding, from clean images only
    assert inversion["suspected_target"] == 0 and inversion["anomaly_index"] > 2 and inversion["auc"] >= 0.9
    g = report["ground_truth"]
    assert g["infected_ablation"] == 11 and 0 <= g["tac_auc_vs_ablation"] <= 1
    # minutes on a CPU: a progress bar on stderr counts the measurements (ground truth + every score)
    assert f"{1 + len(SCORES.names())}/{1 + len(SCORES.names())}" in result.stderr
    bad = run_cli("identify", "--bundle", tmp_path / "missing", "--json")
    assert_clean_error(bad.returncode, bad.stderr)
