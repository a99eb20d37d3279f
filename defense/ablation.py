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

from collections.abc import Callable

import torch
from torch import fx, nn

from .data import TensorData
from .metrics import hold_measure, neuron_sample, truth_result
from .neurons import NeuronLayer, neuron_masking
from .runtime import StopCheck, check_stop

Progress = Callable[[int, int], None]  # (neurons done, neurons in all)


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
    max_images: int = 256,
    effect: str = "margin",
    max_neurons: int | None = None,
    seed: int = 0,
    should_stop: StopCheck = None,
    progress: Progress | None = None,
) -> dict:
    """Same result as ``metrics.backdoor_ground_truth`` (which see), computed layer by layer on suffixes."""
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
            at = live.index(calls[out_name][0])
            out = values[at]
        for j, i in enumerate(todo):
            check_stop(should_stop)
            if parts is not None:
                keep = torch.ones(nl.size, device=dev)
                keep[i] = 0
                values[at] = out * (keep.view(1, -1, 1, 1) if out.dim() == 4 else keep.view(1, -1))
                hb, hc = holds(suffix(*values))
            else:
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
    return truth_result(backdoor, clean, measured, infected_fraction)
