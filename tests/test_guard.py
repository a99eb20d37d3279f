"""The rebound guard: neuron sensitivity from first principles, and checkpoint keeping in a real run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from defense.data import TensorData
from defense.guard import CheckpointGuard, neuron_sensitivity
from defense.purify import Purification, PurifyConfig
from defense.salience import neuron_map


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _tiny_data(n=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 2, 2, generator=gen)
    y = (x.flatten(1).sum(1) > 2).long()
    return TensorData(x, y)


def test_sensitivity_is_one_signed_gradient_step_from_the_seeded_start():
    torch.manual_seed(0)
    net = TwoLayer()
    data = _tiny_data()
    eps = 0.3
    # by hand: δ0 ~ U[−ε, ε] from the same seeded generator, one step ε·sign(∂L/∂δ), clipped
    delta0 = (torch.rand(3, generator=torch.Generator().manual_seed(5)) * 2 - 1) * eps
    d = delta0.clone().requires_grad_(True)

    def loss_at(dv):
        h = net.fc1(data.x.flatten(1)) * (1 + dv)
        return F.cross_entropy(net.fc2(torch.relu(h)), data.y)

    (g,) = torch.autograd.grad(loss_at(d), d)
    with torch.no_grad():
        expected = float(loss_at((delta0 + eps * g.sign()).clamp(-eps, eps)))
    got = neuron_sensitivity(net, neuron_map(net), data, eps=eps, seed=5)
    assert abs(got - expected) < 1e-5
    # ε = 0 is the plain clean loss; the perturbation raises it
    plain = float(F.cross_entropy(net(data.x), data.y))
    assert abs(neuron_sensitivity(net, neuron_map(net), data, eps=0.0) - plain) < 1e-6
    assert got > plain


def test_sensitivity_leaves_the_model_as_it_was():
    net = TwoLayer().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.fc1.weight.requires_grad_(False)
    neuron_sensitivity(net, neuron_map(net), _tiny_data(), eps=0.4)
    assert net.training and not net.fc1.weight.requires_grad and net.fc2.weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert not net.fc1._forward_hooks  # no hook left behind


def test_checkpoint_guard_keeps_the_lowest_and_a_copy_of_it():
    net = TwoLayer()
    guard = CheckpointGuard()
    assert guard.restore(net) is None
    assert guard.offer(net, 10, 2.0)
    saved = net.fc1.weight.detach().clone()
    with torch.no_grad():
        net.fc1.weight.add_(1.0)  # later training must not change the kept state
    assert not guard.offer(net, 20, 3.0)
    assert not guard.offer(net, 30, 2.0)  # a tie keeps the earlier checkpoint
    assert guard.restore(net) == 10
    assert torch.equal(net.fc1.weight, saved)


def test_guarded_run_ends_on_its_least_sensitive_checkpoint():
    torch.manual_seed(0)
    net = TwoLayer()
    clean, test = _tiny_data(64, 1), _tiny_data(64, 2)
    triggered = TensorData(test.x[:16], torch.zeros(16, dtype=torch.long))
    cfg = PurifyConfig(steps=20, eval_every=5, lr=0.5, batch_size=16, augment=False, guard="sensitivity", ratio=0.3)
    run = Purification(net, clean, test, triggered, cfg)
    result = run.run()
    evaluated = [h for h in run.history[1:] if "sensitivity" in h and "checkpoint" not in h]
    best = min(evaluated, key=lambda h: h["sensitivity"])
    last = run.history[-1]
    assert result["steps"] == 20
    if best["step"] != 20:
        assert last["checkpoint"] == best["step"]
    # what is reported is the kept checkpoint, measured again
    assert abs(last["sensitivity"] - best["sensitivity"]) < 1e-6
    assert abs(result["after"]["clean_acc"] - best["clean_acc"]) < 1e-6
    assert abs(result["after"]["asr"] - best["asr"]) < 1e-6
    # and the model returned is that checkpoint
    layers = neuron_map(run.model)
    assert abs(neuron_sensitivity(run.model, layers, clean, cfg.guard_eps, seed=cfg.seed) - best["sensitivity"]) < 1e-6
