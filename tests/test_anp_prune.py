"""ANP as a defense, against first principles on tiny nets."""

from __future__ import annotations

import torch
from torch import nn

from defense import baselines
from defense.anp_prune import _perturbed, anp_mask_values, anp_prune_mask
from defense.data import TensorData
from defense.neurons import neuron_map
from defense.purify import PurifyConfig


class TwoLayer(nn.Module):
    def __init__(self, hidden=2):
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_perturbation_scales_the_weight_part_and_the_bias_separately():
    torch.manual_seed(0)
    net = TwoLayer(3)
    layers = neuron_map(net)
    x = torch.rand(5, 2)
    m = {"fc1": torch.tensor([1.0, 0.5, 0.0])}
    d = {"fc1": torch.tensor([0.1, -0.2, 0.3])}
    xi = {"fc1": torch.tensor([-0.4, 0.0, 0.2])}
    w, b = net.fc1.weight.detach(), net.fc1.bias.detach()
    with torch.no_grad():
        with _perturbed(layers, m, d, xi, noisy=True):
            got = net.fc1(x)
        with _perturbed(layers, m, d, xi, noisy=False):
            plain = net.fc1(x)
    assert torch.allclose(got, (m["fc1"] + d["fc1"]) * (x @ w.T) + (1 + xi["fc1"]) * b, atol=1e-6)
    assert torch.allclose(plain, m["fc1"] * (x @ w.T) + b, atol=1e-6)
    assert not net.fc1._forward_hooks


def _harmful_neuron_net():
    """Unit 0 fires on class 1 (x0 > 0.5) and votes for it; unit 1 fires only on class 0 and votes class 1.

    Zeroing unit 1 lowers the clean loss on every image it touches; zeroing unit 0 raises it. The second
    input is a constant 1 and the hidden biases are 0, so ANP's mask (on the weight part) removes a unit whole.
    """
    net = TwoLayer(2)
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[4.0, -2.0], [-4.0, 2.0]]))
        net.fc1.bias.zero_()
        net.fc2.weight.copy_(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]))
        net.fc2.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.rand(64, 1, 1, 2, generator=torch.Generator().manual_seed(1))
    x[..., 1] = 1.0
    y = (x.flatten(1)[:, 0] > 0.5).long()
    return net, TensorData(x, y)


def test_masks_drop_the_neuron_that_hurts_the_clean_loss_and_keep_the_useful_one():
    net, data = _harmful_neuron_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    values = anp_mask_values(net, data, neuron_map(net), iterations=60, batch_size=32)
    assert values["fc1"][1] <= 0.2 < values["fc1"][0]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model is untouched
    assert all(p.requires_grad for p in net.parameters())
    pruned = anp_prune_mask(net, data, neuron_map(net), iterations=60, batch_size=32)
    assert pruned["fc1"].tolist() == [False, True]


def test_anp_defense_prunes_exactly_its_mask_and_does_not_fine_tune():
    net, data = _harmful_neuron_net()
    triggered = TensorData(data.x[:8], torch.zeros(8, dtype=torch.long))
    expected = anp_prune_mask(net, data, neuron_map(net), seed=3)
    run = baselines.make("anp", net, data, data, triggered, PurifyConfig(seed=3))
    result = run.run()
    assert result["steps"] == 0
    assert {n: m.tolist() for n, m in run.mask.items()} == {n: m.tolist() for n, m in expected.items()}
    for i, gone in enumerate(expected["fc1"].tolist()):
        row_zero = bool((run.model.fc1.weight[i] == 0).all() and run.model.fc1.bias[i] == 0)
        assert row_zero == gone
    assert result["after"]["clean_acc"] >= result["before"]["clean_acc"]  # dropping the harmful unit helps
