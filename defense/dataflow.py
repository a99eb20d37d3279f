"""Which BatchNorm belongs to which neuron layer, read from the data flow (torch.fx).

A conv (or linear) layer's neuron is paired with a BatchNorm only when that BatchNorm
is the *sole consumer* of the layer's output: then the neuron's output is the
BatchNorm's output, and zeroing the neuron means zeroing the layer's weight row and
bias and the BatchNorm's γ and β (zeroing the weights alone would leave BatchNorm's
shift). Anything else (a pre-activation BatchNorm that acts on a residual sum, a conv
whose output also feeds a shortcut, a BatchNorm defined next to a conv but applied
elsewhere) leaves the layer unpaired, and its neuron's output is the layer's own output.

The pairing by module order that this replaces gets pre-activation networks wrong
whenever a BatchNorm is *defined* right after a conv it does not read.
"""

from __future__ import annotations

import threading
import warnings
import weakref

from torch import fx, nn

NEURON_TYPES = (nn.Conv2d, nn.Linear)
_NORM_FOR = {nn.Conv2d: nn.BatchNorm2d, nn.Linear: nn.BatchNorm1d}
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class UntraceableError(RuntimeError):
    """torch.fx could not trace the model (data-dependent control flow, for instance)."""


_TRACE_LOCK = threading.Lock()


class ThreadSafeTracer(fx.Tracer):
    """torch.fx's tracer, safe next to other threads that run models.

    While tracing, torch.fx patches ``nn.Module.__call__`` for the whole process: a forward pass in another
    thread (the app's background measurements) would land in this tracer and fail ('module is not installed
    as a submodule'). Calls on modules of other models, or without symbolic inputs, run as plain calls
    here; and one trace at a time (two patchers restoring each other's patches would leave one behind).
    """

    def trace(self, root, concrete_args=None):
        self._own = {id(m) for m in root.modules()} if isinstance(root, nn.Module) else set()
        return super().trace(root, concrete_args)

    def call_module(self, m, forward, args, kwargs):
        symbolic = any(isinstance(a, fx.Proxy) for a in (*args, *kwargs.values()))
        if id(m) not in getattr(self, "_own", ()) or not symbolic:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def trace_module(model: nn.Module) -> fx.GraphModule:
    """``fx.symbolic_trace`` with the thread-safe tracer; UntraceableError if it cannot be traced."""
    return fx.GraphModule(model, _trace(model))


def _trace(model: nn.Module) -> fx.Graph:
    try:
        with _TRACE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ThreadSafeTracer().trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means "no data flow known"
        raise UntraceableError(f"{type(model).__name__} cannot be traced ({type(err).__name__}: {err})") from None


def batchnorm_pairs(model: nn.Module) -> dict[str, str | None]:
    """{neuron layer name: name of the BatchNorm that alone consumes its output, or None}.

    Every Conv2d and Linear of ``model`` is a key. A model torch.fx cannot trace gets no
    pairs at all (each neuron is its layer's raw output: still exact, only without the
    BatchNorm shift), so the result is never wrong, at worst coarser.
    """
    key = _structure_key(model)
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    modules = dict(model.named_modules())
    pairs: dict[str, str | None] = {n: None for n, m in modules.items() if isinstance(m, NEURON_TYPES)}
    try:
        graph = _trace(model)
    except UntraceableError:
        graph = None
    if graph is not None:
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        for node in graph.nodes:
            if node.op != "call_module" or node.target not in pairs or calls[node.target] != 1:
                continue
            layer = modules[node.target]
            users = list(node.users)
            if len(users) != 1 or users[0].op != "call_module" or calls.get(users[0].target) != 1:
                continue
            bn = modules.get(users[0].target)
            norm_type = _NORM_FOR[type(layer)] if type(layer) in _NORM_FOR else None
            size = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            # affine only: zeroing γ and β is what makes a zeroed neuron output exactly zero
            if norm_type is not None and isinstance(bn, norm_type) and bn.num_features == size and bn.affine:
                pairs[node.target] = users[0].target
    try:
        _CACHE[model] = (key, dict(pairs))
    except TypeError:
        pass
    return pairs


def _structure_key(model: nn.Module) -> tuple:
    """Changes when modules are added, removed or replaced (the cache is then stale)."""
    return tuple((n, id(m)) for n, m in model.named_modules())
