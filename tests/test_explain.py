"""defense.explain: the attribution maps and the share of them on a trigger's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from defense.attacks import make_trigger
from defense.explain import attribution, trigger_share

SHAPE = (1, 12, 12)


def looks_only_at(where: torch.Tensor) -> nn.Module:
    """A linear 2-class model whose class-1 logit sums the pixels in ``where`` (a [C, H, W] 0/1 mask)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(where.numel(), 2, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1] = where.flatten()
    return model


def test_a_model_that_looks_only_at_the_patch_puts_all_its_attribution_there():
    trigger = make_trigger("badnets", SHAPE)
    model = looks_only_at((trigger.mask > 0).float())
    x = trigger.apply(torch.rand(4, *SHAPE))
    attr = attribution(model, x, target=1)
    assert attr.shape == (4, 12, 12) and (attr >= 0).all()
    share, covered = trigger_share(attr, trigger)
    assert share == pytest.approx(1.0)
    assert covered == pytest.approx(float((trigger.mask.amax(0) > 0).float().mean()))
    assert not any(p.grad is not None for p in model.parameters())  # worked on a copy


def test_a_model_that_ignores_the_patch_puts_none_there():
    trigger = make_trigger("badnets", SHAPE)
    model = looks_only_at((trigger.mask == 0).float())
    attr = attribution(model, torch.rand(3, *SHAPE), target=1)
    share, _ = trigger_share(attr, trigger)
    assert share == pytest.approx(0.0, abs=1e-6) and attr.sum() > 0


def test_no_share_for_triggers_that_cover_the_image_or_have_no_mask():
    attr = np.ones((2, 12, 12))
    assert trigger_share(attr, make_trigger("blend", SHAPE)) is None
    assert trigger_share(attr, make_trigger("sig", SHAPE)) is None
