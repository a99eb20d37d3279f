"""Where a model looks: integrated-gradients attribution, and the share of it that falls on a trigger."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from defense.attacks import Trigger


def attribution(model: nn.Module, x: torch.Tensor, target: int | torch.Tensor, n_steps: int = 32) -> np.ndarray:
    """|IntegratedGradients| of ``x`` toward ``target`` (one label, or one per image; black-image baseline),
    max over channels: [N, H, W].

    Runs on a copy, so that a shared model's hooks and gradients stay untouched.
    """
    from captum.attr import IntegratedGradients  # captum is slow to import; only the pages that draw maps need it

    m = copy.deepcopy(model).eval()
    dev = next(m.parameters()).device
    target = target.to(dev) if torch.is_tensor(target) else target
    attr = IntegratedGradients(m).attribute(x.to(dev), target=target, n_steps=n_steps)
    return attr.abs().amax(1).detach().cpu().numpy()


def trigger_share(attr: np.ndarray, trigger: Trigger) -> tuple[float, float] | None:
    """For patch triggers: (share of the attribution on the trigger's pixels, share of the image they cover).

    None for triggers without a mask (SIG, WaNet) or whose mask covers half the image or more (a blend
    covers all of it: there is no place to point at).
    """
    mask = getattr(trigger, "mask", None)
    if mask is None:
        return None
    where = (mask.amax(0) > 0).numpy()
    if not 0 < where.mean() < 0.5:
        return None
    return float(attr[:, where].sum() / max(attr.sum(), 1e-12)), float(where.mean())
