"""The ablation ground truth, fast: zero each neuron and rerun only the part of the network after it.

``metrics.backdoor_ground_truth`` zeroes one neuron at a time with a hook and reruns the whole model. The
layers before the neuron compute the same values every time, so here the model is split with torch.fx at
each neuron layer's output: the *prefix* runs once per layer and hands over every value still needed later
(the layer's output and, in a residual network, the skip connections); the *suffix* runs once per neuron on
those values with the neuron's channel zeroed. Triggered and clean images go through in one batch. The
result equals the hook version's (a test checks it); a model torch.fx cannot trace, or a layer whose module
is called twice, falls back to the hook version for that layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import fx, nn

from .data import TensorData
from .metrics import hold_measure, neuron_sample, truth_result
from .neurons import NeuronLayer, neuron_masking
from .runtime import StopCheck, check_stop

Progress = Callable[[int, int], None]  # (neurons done, neurons in all)

# The work is neurons x images. 80,000 neuron-images take about a minute for the bundled PreAct-ResNet-18
# (1,200 neurons) on one CPU core; bench/identify.py measured 64 images to agree with 256 at rank
# correlation >= 0.98 on every bundled model, so big models use fewer images before any neuron is left out.
NEURON_IMAGES = int(os.environ.get("BNL_TRUTH_BUDGET", 80_000))
MIN_IMAGES, MAX_IMAGES = 64, 256


def plan(neurons: int, budget: int | None = None) -> tuple[int, int | None]:
    """(images per set, neurons to measure: None for all) so that neurons x images fits the budget.

    Deterministic (by neuron count, never by timing), so the CLI and the app measure the same truth.
    """
    budget = NEURON_IMAGES if budget is None else budget
    images = max(MIN_IMAGES, min(MAX_IMAGES, budget // max(neurons, 1)))
    cap = max(1, budget // images)
    return images, None if neurons <= cap else cap


def _split(gm: fx.GraphModule, out_node: fx.Node) -> tuple[fx.GraphModule, fx.GraphModule, list[fx.Node]] | None:
    """(prefix, suffix, live): prefix(x) -> values of ``live``; suffix(*values) -> logits."""
    nodes = list(gm.graph.nodes)
    where = {n: i for i, n in enumerate(nodes)}
    cut = where[out_node]
    live = [n for n in nodes[: cut + 1] if n.op != "get_attr" and any(where[u] > cut for u in n.users)]
    if out_node not in live:
        return None
    prefix = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes[: cut + 1]:
        env[n] = prefix.node_copy(n, lambda a: env[a])
    prefix.output(tuple(env[n] for n in live))
    suffix = fx.Graph()
    env = {n: suffix.placeholder(f"live_{i}") for i, n in enumerate(live)}
    for n in nodes:  # parameters and buffers read directly (no inputs): available everywhere
        if n.op == "get_attr":
            env[n] = suffix.node_copy(n, lambda a: env[a])
    for n in nodes[cut + 1 :]:
        if n.op == "placeholder":
            return None
        if n.op != "get_attr":
            env[n] = suffix.node_copy(n, lambda a: env[a])
    return fx.GraphModule(gm, prefix), fx.GraphModule(gm, suffix), live


@torch.no_grad()
def ground_truth(
    model: nn.Module,
    layers: dict[str, NeuronLayer],
    test: TensorData,
    triggered: TensorData,
    infected_fraction: float = 0.1,
    max_images: int | None = 256,
    effect: str = "margin",
    max_neurons: int | None = None,
    seed: int = 0,
    should_stop: StopCheck = None,
    progress: Progress | None = None,
    batch_images: int = 1024,
) -> dict:
    """Same result as ``metrics.backdoor_ground_truth`` (which see), computed layer by layer on suffixes.

    ``max_images=None`` takes the images and the neuron sample from ``plan`` (``max_neurons`` is ignored then).

    Several neurons of a layer go through the suffix in one call (about ``batch_images`` images per
    call), which saves the per-call overhead that dominates in the small late layers.
    """
    if max_images is None:
        max_images, max_neurons = plan(sum(nl.size for nl in layers.values()))
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    xt, yt = triggered.x[:max_images].to(dev), triggered.y[:max_images].to(dev)
    xc, yc = test.x[:max_images].to(dev), test.y[:max_images].to(dev)
    x, y, nt = torch.cat([xt, xc]), torch.cat([yt, yc]), len(xt)
    hold = hold_measure(effect)

    def holds(logits):  # triggered and clean images went through in one batch
        return float(hold(logits[:nt], y[:nt])), float(hold(logits[nt:], y[nt:]))

    base_b, base_c = holds(model(x))
    from .dataflow import UntraceableError, trace_module

    try:
        gm = trace_module(model)
    except UntraceableError:  # every layer takes the hook path
        gm = None
    calls: dict[str, list[fx.Node]] = {}
    for n in gm.graph.nodes if gm is not None else []:
        if n.op == "call_module":
            calls.setdefault(n.target, []).append(n)
    measured = neuron_sample(layers, max_neurons, seed)
    total, done = int(sum(int(m.sum()) for m in measured.values())), 0
    backdoor, clean = {}, {}
    names = {id(m): n for n, m in model.named_modules()}
    for name, nl in layers.items():
        b, c = torch.full((nl.size,), float("nan")), torch.full((nl.size,), float("nan"))
        todo = measured[name].nonzero().flatten().tolist()
        out_name = names[id(nl.output)]
        parts = _split(gm, calls[out_name][0]) if gm is not None and len(calls.get(out_name, [])) == 1 else None
        if parts is not None:
            prefix, suffix, live = parts
            values = list(prefix(x))
            out = values[live.index(calls[out_name][0])]
            # k neurons per suffix call, each with its own copy of the images and its channel zeroed; a
            # value that is not a tensor (a size read before the cut) would not follow the bigger batch
            tensors = all(isinstance(v, torch.Tensor) for v in values)
            k = max(1, batch_images // len(x)) if tensors else 1
            for start in range(0, len(todo), k):
                check_stop(should_stop)
                group = todo[start : start + k]
                keep = torch.ones(len(group), nl.size, device=dev)
                keep[torch.arange(len(group)), torch.tensor(group)] = 0
                shape = (len(group), 1, nl.size) + (1,) * (out.dim() - 2)
                stacked = [
                    (out.unsqueeze(0) * keep.view(shape)).flatten(0, 1)
                    if v is out
                    else v.unsqueeze(0).expand(len(group), *v.shape).flatten(0, 1)
                    for v in values
                ]
                logits = suffix(*stacked).view(len(group), len(x), -1)
                for g, i in enumerate(group):
                    hb, hc = holds(logits[g])
                    b[i], c[i] = base_b - hb, base_c - hc
                done += len(group)
                if progress is not None:
                    progress(done, total)
        else:
            for j, i in enumerate(todo):
                check_stop(should_stop)
                m = torch.zeros(nl.size, dtype=torch.bool)
                m[i] = True
                with neuron_masking({name: nl}, {name: m}):
                    hb, hc = holds(model(x))
                b[i], c[i] = base_b - hb, base_c - hc
                done += 1
                if progress is not None and (j % 16 == 15 or j == len(todo) - 1):
                    progress(done, total)
        backdoor[name], clean[name] = b, c
    model.train(was)
    return {**truth_result(backdoor, clean, measured, infected_fraction), "images": len(xt)}
