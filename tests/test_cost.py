"""Forward cost by counting, and the preview's image budget (defense/cost.py)."""

from __future__ import annotations

import torch
from torch import nn

from defense import cost
from defense.data import TensorData


def test_macs_are_counted_from_first_principles():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(36, 5)
    )
    # conv1: 2 channels x 3x3 outputs, each 1x3x3 inputs; conv2 (2 groups): 4 x 3x3 outputs, each 1x3x3; linear: 5 x 36
    assert cost.macs_per_image(net, (1, 5, 5)) == 2 * 9 * 9 + 4 * 9 * 9 + 5 * 36
    assert net.training  # left as it was


def test_preview_size_takes_everything_a_small_model_can_afford_and_at_least_200():
    assert cost.preview_size(1_000, 1_000, budget=1e9) == 1_000
    assert cost.preview_size(10**7, 1_000, budget=1e9) == 200  # 100 affordable, the floor is 200
    assert cost.preview_size(2 * 10**6, 1_000, budget=1e9) == 500
    assert cost.preview_size(10**9, 50, budget=1e9) == 50  # never more than there are


def test_preview_sets_are_a_seeded_subset_for_a_big_model(monkeypatch):
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))  # 12 MACs per image
    test = TensorData(torch.rand(500, 1, 2, 2), torch.arange(500) // 167)  # sorted by class, as a folder comes
    trig = TensorData(torch.rand(400, 1, 2, 2), torch.zeros(400, dtype=torch.int64))
    full = cost.preview_sets(net, (1, 2, 2), test, trig)
    assert full[0] is test and full[1] is trig
    monkeypatch.setattr(cost, "PREVIEW_MACS", 12 * 300)  # 300 images per set
    a, b = cost.preview_sets(net, (1, 2, 2), test, trig)
    assert len(a) == 300 and len(b) == 300
    again = cost.preview_sets(net, (1, 2, 2), test, trig)[0]
    assert torch.equal(a.x, again.x)  # the same images every time
    assert len(set(a.y.tolist())) == 3  # not the first 300 of a sorted set: every class is there
