"""How steady a score is across the defender's clean subsets, and estimators of benign salience
that were tried to make it steadier (docs/METHOD.md, "Stability of benign salience").

BS itself stays as defined (``salience.benign_salience``: signed −∂L/∂w ⊙ w, EMA η = 0.9).
What changes here is only *where and how often* the gradient is sampled:
- ``passes``: several passes over the clean subset, the EMA running across them;
- ``augment``: each pass on randomly shifted copies (±2 pixels, as in purification), which
  moves the estimate off the training minimum where the signed term averages to ~0;
- ``per_sample``: the mean of per-image −(∂ℓᵢ/∂y)·y instead of the batch-mean gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import TensorData
from .neurons import NeuronLayer, NeuronScores, neuron_map
from .purify import _shift
from .salience import BenignSalience


def benign_salience_estimate(
    model: nn.Module,
    clean: TensorData,
    layers: dict[str, NeuronLayer] | None = None,
    passes: int = 1,
    augment: bool = False,
    batch_size: int = 64,
    momentum: float = 0.9,
    seed: int = 0,
) -> NeuronScores:
    """BS (same formula, same EMA) accumulated over ``passes`` passes, optionally on shifted copies."""
    layers = layers if layers is not None else neuron_map(model)
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    tracker = BenignSalience(model, momentum)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    try:
        for _ in range(passes):
            for xb, yb in clean.batches(batch_size, generator=gen if passes > 1 else None):
                xb = _shift(xb, gen) if augment else xb
                model.zero_grad(set_to_none=True)
                loss_fn(model(xb.to(dev)), yb.to(dev)).backward()
                tracker.update()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return tracker.per_neuron(layers)


def per_sample_salience(
    model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer] | None = None, batch_size: int = 100
) -> dict[str, torch.Tensor]:
    """Per image and neuron, −(∂ℓᵢ/∂y)·y summed over positions: {layer: [N, neurons]}.

    Its mean over images is BS's per-neuron value for a single full batch (no EMA)."""
    return per_sample_terms(model, clean, layers, batch_size)[0]


def per_sample_terms(
    model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer] | None = None, batch_size: int = 100
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``per_sample_salience`` and each image's clean loss ℓᵢ [N], from the same passes."""
    layers = layers if layers is not None else neuron_map(model)
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, nl in layers.items():

        def hook(_m, _i, out, name=name):
            out.retain_grad()
            outs[name] = out

        hooks.append(nl.output.register_forward_hook(hook))
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    losses: list[torch.Tensor] = []
    try:
        for xb, yb in clean.batches(batch_size):
            model.zero_grad(set_to_none=True)
            each = nn.functional.cross_entropy(model(xb.to(dev)), yb.to(dev), reduction="none")
            each.sum().backward()  # the sum: each image's output gets ℓᵢ's own gradient
            losses.append(each.detach().cpu())
            for n, y in outs.items():
                gy = -(y.grad * y).detach()
                rows[n].append((gy.flatten(2).sum(2) if gy.dim() == 4 else gy).cpu())
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    return {n: torch.cat(r) for n, r in rows.items()}, torch.cat(losses)


def hardest_images_share(per_sample: torch.Tensor, loss: torch.Tensor, share: float = 0.05) -> dict:
    """How much of BS the clean images with the highest loss carry (docs/METHOD.md, "Stability").

    ``per_sample``: [images, neurons] per-image signed salience (``per_sample_salience``, layers joined);
    ``loss``: [images] each image's clean loss. Returns the number of hardest images ``k``, their share of
    the total |salience|, and the Spearman correlation between BS (the column sums) and the sums over those
    ``k`` images alone. At a training minimum nearly every image is fitted and contributes ~0, so a share
    near 1 and a correlation near 1 say that BS ranks neurons by the few images the model gets (nearly)
    wrong: a different subset holds different hard images, hence a different ranking.
    """
    k = max(1, int(round(len(loss) * share)))
    hardest = loss.argsort(descending=True)[:k]
    total_abs = per_sample.abs().sum().clamp_min(1e-30)
    return {
        "images": k,
        "of": len(loss),
        "share": float(per_sample[hardest].abs().sum() / total_abs),
        "spearman": spearman(per_sample.sum(0), per_sample[hardest].sum(0)),
    }


def hardest_images_report(
    model: nn.Module, clean: TensorData, layers: dict[str, NeuronLayer] | None = None, share: float = 0.05
) -> dict:
    """``hardest_images_share`` for a model and its clean subset (eval mode, as BS is measured)."""
    terms, losses = per_sample_terms(model, clean, layers)
    return hardest_images_share(torch.cat(list(terms.values()), 1), losses, share)


def rank_within_layers(scores: NeuronScores) -> dict[str, torch.Tensor]:
    """Per layer, each neuron's rank by suspicion scaled to [0, 1] (1 = most suspect)."""
    out = {}
    for name, s in scores.suspicion().items():
        out[name] = s.argsort().argsort().float() / max(len(s) - 1, 1)
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (ranks by argsort; ties broken by order)."""
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).clamp_min(1e-12)
    return float((ra * rb).sum() / denom)


def stability(runs: list[NeuronScores]) -> dict:
    """Across scores of one metric from different clean subsets: the lowest pairwise Spearman
    correlation of the per-neuron values, and per neuron its per-layer rank in each run."""
    names = list(runs[0].layers)
    flat = [torch.cat([r.layers[n] for n in names]) for r in runs]
    pairs = [(i, j) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    rhos = [spearman(flat[i], flat[j]) for i, j in pairs]
    ranks = [rank_within_layers(r) for r in runs]
    return {
        "spearman_min": min(rhos) if rhos else float("nan"),
        "spearman_mean": sum(rhos) / len(rhos) if rhos else float("nan"),
        "ranks": {n: torch.stack([rk[n] for rk in ranks], 1) for n in names},  # [neurons, runs]
    }
