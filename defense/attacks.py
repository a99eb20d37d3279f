"""Backdoor triggers and poisoned training sets (all-to-one: every triggered image goes to one target).

Every trigger acts on pixels in [0, 1], before normalization, and returns pixels in [0, 1].
- badnets: a white-and-black checker patch in the bottom-right corner (mask/pattern);
- blend: a fixed random noise image blended in at ``alpha`` (mask/pattern with mask = alpha);
- file: any mask/pattern pair from a ``trigger.safetensors``;
- sig: an additive horizontal sinusoid (Barni et al.), poisoned with the target label;
- wanet: a smooth, fixed warping field (Nguyen & Tran), no noise mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .registry import ATTACKS, Attack
from .targets import Target, as_target

TENSOR_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TriggerError(ValueError):
    """A trigger's tensors or parameters are unusable."""


class Trigger:
    kind = "base"

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def params(self) -> dict:
        """JSON-able parameters for meta.json."""
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors for trigger.safetensors (empty when params suffice)."""
        return {}

    def describe(self) -> str:
        return self.kind


@dataclass
class MaskPatternTrigger(Trigger):
    """x' = (1 - mask) * x + mask * pattern, mask and pattern shaped [C, H, W] in [0, 1]."""

    mask: torch.Tensor
    pattern: torch.Tensor
    kind: str = "file"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.mask = self.mask.float()
        self.pattern = self.pattern.float()
        validate_mask_pattern(self.mask, self.pattern)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        mask, pattern = self.mask.to(x.device), self.pattern.to(x.device)
        return (1 - mask) * x + mask * pattern

    def params(self) -> dict:
        return dict(self.extra)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mask": self.mask.contiguous(), "pattern": self.pattern.contiguous()}

    def describe(self) -> str:
        entry = ATTACKS.get(self.kind) if self.kind in ATTACKS else None
        if entry is not None and entry.describe is not None:
            return entry.describe(self)
        covered = float((self.mask > 0).float().mean())
        return f"Trigger from a file: mask covers {covered:.1%} of the pixels"


def validate_mask_pattern(mask: torch.Tensor, pattern: torch.Tensor, input_shape: Sequence[int] | None = None) -> None:
    for name, t in (("mask", mask), ("pattern", pattern)):
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.dtype not in TENSOR_DTYPES:
            kind = f"{t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise TriggerError(f"{name} must be a dense float tensor (float32 expected), found {kind}")
    problems = []
    if mask.dim() != 3 or pattern.dim() != 3 or 0 in mask.shape:
        problems.append(
            f"mask and pattern must be non-empty [C, H, W], got {list(mask.shape)} and {list(pattern.shape)}"
        )
    elif mask.shape != pattern.shape:
        problems.append(f"mask {list(mask.shape)} and pattern {list(pattern.shape)} differ in shape")
    elif input_shape is not None and list(mask.shape) != list(input_shape):
        problems.append(f"trigger shape {list(mask.shape)} does not match the model's input {list(input_shape)}")
    for name, t in (("mask", mask), ("pattern", pattern)):
        if not torch.isfinite(t).all():
            problems.append(f"{name} holds NaN or infinite values")
        elif t.numel() and (t.min() < 0 or t.max() > 1):
            problems.append(f"{name} values must lie in [0, 1], found [{t.min():.3g}, {t.max():.3g}]")
    if problems:
        raise TriggerError("; ".join(problems))


def badnets(input_shape: Sequence[int], size: int = 3, margin: int = 1) -> MaskPatternTrigger:
    c, h, w = input_shape
    mask = torch.zeros(c, h, w)
    pattern = torch.zeros(c, h, w)
    top, left = h - margin - size, w - margin - size
    mask[:, top : top + size, left : left + size] = 1
    checker = (torch.arange(size).view(-1, 1) + torch.arange(size).view(1, -1)) % 2 == 0
    pattern[:, top : top + size, left : left + size] = checker.float()
    return MaskPatternTrigger(mask, pattern, kind="badnets", extra={"size": size, "margin": margin})


def blend(input_shape: Sequence[int], alpha: float = 0.2, seed: int = 0) -> MaskPatternTrigger:
    pattern = torch.rand(*input_shape, generator=torch.Generator().manual_seed(seed))
    return MaskPatternTrigger(
        torch.full(tuple(input_shape), alpha), pattern, kind="blend", extra={"alpha": alpha, "seed": seed}
    )


@dataclass
class SigTrigger(Trigger):
    delta: float = 0.2
    frequency: int = 6
    kind: str = "sig"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        wave = self.delta * torch.sin(2 * math.pi * torch.arange(width, device=x.device) * self.frequency / width)
        return (x + wave.view(1, 1, 1, -1)).clamp(0, 1)

    def params(self) -> dict:
        return {"delta": self.delta, "frequency": self.frequency}

    def describe(self) -> str:
        return (
            f"SIG: a faint vertical-stripe sinusoid (amplitude {self.delta}, {self.frequency} periods) "
            "added to the image"
        )


@dataclass
class WaNetTrigger(Trigger):
    """A fixed smooth warp: a k x k random flow field upsampled to the image, scaled by ``strength``."""

    flow: torch.Tensor  # [H, W, 2], values in [-1, 1] before scaling
    strength: float = 0.5
    kind: str = "wanet"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device), indexing="ij"
        )
        identity = torch.stack((xs, ys), dim=-1)
        grid = (identity + self.strength * self.flow.to(x.device) / h).clamp(-1, 1)
        return F.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1), align_corners=True).clamp(0, 1)

    def params(self) -> dict:
        return {"strength": self.strength}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"flow": self.flow.contiguous()}

    def describe(self) -> str:
        return f"WaNet: an almost invisible smooth warp of the whole image (strength {self.strength})"


def wanet(input_shape: Sequence[int], k: int = 4, strength: float = 0.5, seed: int = 0) -> WaNetTrigger:
    _, h, w = input_shape
    noise = torch.rand(1, 2, k, k, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    noise = noise / noise.abs().mean()
    flow = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)[0]
    return WaNetTrigger(flow, strength)


def _number(params: dict, key: str, default, low, high, integer: bool = False):
    """A trigger parameter checked for type and range (they come from files and the command line)."""
    value = params.get(key, default)
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and low <= value <= high
        and (isinstance(value, int) or math.isfinite(value))
    )
    if not ok or (integer and not float(value).is_integer()):
        raise TriggerError(
            f"trigger parameter '{key}' must be {'an integer' if integer else 'a number'} in [{low}, {high}], "
            f"found {value!r}"
        )
    return int(value) if integer else float(value)


def load_trigger_file(path: str | Path, input_shape: Sequence[int] | None = None) -> MaskPatternTrigger:
    """A mask/pattern trigger from a safetensors file (never a pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from . import guards

    try:
        size = guards.regular_file(path, "trigger file").st_size  # a FIFO would block the open below
    except guards.LimitError as err:
        raise TriggerError(str(err)) from None
    if size > guards.MAX_MEMBER_BYTES:  # the cap of a bundle member; a sparse file can declare gigabytes
        raise TriggerError(f"{path} is larger than {guards.MAX_MEMBER_BYTES // 2**20} MiB; refused")
    try:
        header = guards.safetensors_shapes(path)  # the header only: shapes are checked before any tensor is read
    except (SafetensorError, OSError, ValueError) as err:
        raise TriggerError(f"{path} is not a readable safetensors file with 'mask' and 'pattern': {err}") from None
    if input_shape is not None:
        wrong = [shape for k, (_, shape) in sorted(header.items()) if k in ("mask", "pattern")]
        wrong = [shape for shape in wrong if shape != list(input_shape)]
        if wrong:
            raise TriggerError(
                f"{path}: trigger shape {wrong[0]} does not match the model's input {list(input_shape)} "
                "(read from the file's header; no tensor was loaded)"
            )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise TriggerError(f"{path} is not a readable safetensors file with 'mask' and 'pattern': {err}") from None
    missing = {"mask", "pattern"} - set(tensors)
    if missing:
        raise TriggerError(f"{path} lacks tensor(s) {', '.join(sorted(missing))}")
    validate_mask_pattern(tensors["mask"], tensors["pattern"], input_shape)
    return MaskPatternTrigger(tensors["mask"], tensors["pattern"], kind="file")


def _check_params(attack: Attack, params) -> dict:
    if not isinstance(params, dict):
        raise TriggerError(f"trigger parameters must be an object of names and values, found {type(params).__name__}")
    unknown = sorted(str(k) for k in params if k not in attack.params)
    if unknown:
        allowed = ", ".join(attack.params) or "none"
        raise TriggerError(
            f"unknown parameter(s) {', '.join(unknown)} for attack '{attack.name}' (it takes: {allowed})"
        )
    return params


def _attack(kind) -> Attack:
    if not isinstance(kind, str) or kind not in ATTACKS:
        raise TriggerError(f"unknown attack '{kind}': expected one of {', '.join(ATTACKS.names())}")
    return ATTACKS[kind]


def make_trigger(
    kind: str, input_shape: Sequence[int], seed: int = 0, trigger_file: str | Path | None = None, **params
) -> Trigger:
    """A new trigger of ``kind`` for images of ``input_shape`` (parameters checked for name, type and range)."""
    attack = _attack(kind)
    return attack.make(input_shape, seed, _check_params(attack, params), trigger_file)


def trigger_from_meta(attack: dict, tensors: dict[str, torch.Tensor], input_shape: Sequence[int]) -> Trigger:
    """Rebuild the trigger a bundle describes."""
    kind, params = attack.get("kind"), attack.get("params") or {}
    if not isinstance(params, dict):
        raise TriggerError(f"attack parameters must be an object, found {type(params).__name__}")
    entry = _attack(kind)
    return entry.from_meta(dict(params), tensors, input_shape)


# ---------------------------------------------------------------- the registered attacks
# make(input_shape, seed, params, trigger_file) and from_meta(params, tensors, input_shape); params come from the
# command line or from a file, so every value is checked by _number.


def _sig_from(params: dict) -> SigTrigger:
    return SigTrigger(
        delta=_number(params, "delta", 0.2, 0, 1), frequency=_number(params, "frequency", 6, 0, 10_000, integer=True)
    )


def _mask_pattern_from_meta(kind: str):
    def from_meta(params: dict, tensors: dict[str, torch.Tensor], input_shape: Sequence[int]) -> MaskPatternTrigger:
        if not {"mask", "pattern"} <= set(tensors):
            raise TriggerError(f"attack '{kind}' needs trigger.safetensors with 'mask' and 'pattern'")
        validate_mask_pattern(tensors["mask"], tensors["pattern"], input_shape)
        return MaskPatternTrigger(tensors["mask"], tensors["pattern"], kind=kind, extra=params)

    return from_meta


def _make_badnets(input_shape, seed, params, trigger_file=None) -> MaskPatternTrigger:
    side = min(input_shape[1], input_shape[2])
    size = _number(params, "size", 3, 1, side, integer=True)
    return badnets(input_shape, size=size, margin=_number(params, "margin", 1, 0, side - size, integer=True))


def _make_file(input_shape, seed, params, trigger_file=None) -> MaskPatternTrigger:
    if trigger_file is None:
        raise TriggerError("attack 'file' needs --trigger-file PATH (a safetensors file with 'mask' and 'pattern')")
    return load_trigger_file(trigger_file, input_shape)


def _make_wanet(input_shape, seed, params, trigger_file=None) -> WaNetTrigger:
    k = _number(params, "k", 4, 2, 256, integer=True)
    return wanet(input_shape, k=k, strength=_number(params, "strength", 0.5, 0, 100), seed=seed)


def _wanet_from_meta(params: dict, tensors: dict[str, torch.Tensor], input_shape) -> WaNetTrigger:
    flow = tensors.get("flow")
    if (
        flow is None
        or flow.layout != torch.strided
        or flow.dtype not in TENSOR_DTYPES
        or list(flow.shape) != [input_shape[1], input_shape[2], 2]
        or not torch.isfinite(flow).all()
    ):
        raise TriggerError(
            f"attack 'wanet' needs a finite float 'flow' tensor of shape {[input_shape[1], input_shape[2], 2]}"
        )
    return WaNetTrigger(flow.float(), _number(params, "strength", 0.5, 0, 100))


ATTACKS.register(
    Attack(
        "badnets",
        "BadNets",
        "A small white-and-black checker patch stamped in the bottom-right corner of the image (BadNets, "
        "Gu et al. 2017); parameters: the patch's size and its margin from the corner, in pixels.",
        _make_badnets,
        params=("size", "margin"),
        from_meta=_mask_pattern_from_meta("badnets"),
        describe=lambda t: (
            f"BadNets: a {t.extra.get('size', '?')}x{t.extra.get('size', '?')} checker patch in the bottom-right corner"
        ),
    )
)
ATTACKS.register(
    Attack(
        "blend",
        "Blend",
        "A fixed random-noise image blended into the whole picture at strength alpha (Chen et al. 2017).",
        lambda input_shape, seed, params, trigger_file=None: blend(
            input_shape, alpha=_number(params, "alpha", 0.2, 0, 1), seed=seed
        ),
        params=("alpha",),
        from_meta=_mask_pattern_from_meta("blend"),
        describe=lambda t: f"Blend: a fixed noise image mixed into the whole picture at alpha = {t.extra.get('alpha')}",
    )
)
ATTACKS.register(
    Attack(
        "sig",
        "SIG",
        "A faint sinusoid along the image's width (vertical stripes) added to the image (Barni et al. 2019); "
        "parameters: its amplitude delta and the number of periods across the image.",
        lambda input_shape, seed, params, trigger_file=None: _sig_from(params),
        params=("delta", "frequency"),
        from_meta=lambda params, tensors, input_shape: _sig_from(params),
    )
)
ATTACKS.register(
    Attack(
        "wanet",
        "WaNet",
        "An almost invisible, fixed smooth warp of the whole image (Nguyen & Tran 2021, no noise mode); "
        "parameters: the size k of the random flow grid and the warp's strength.",
        _make_wanet,
        params=("k", "strength"),
        from_meta=_wanet_from_meta,
    )
)
ATTACKS.register(
    Attack(
        "file",
        "Trigger from a file",
        "Any mask/pattern pair read from a trigger.safetensors file: x' = (1 − mask)·x + mask·pattern.",
        _make_file,
        from_meta=_mask_pattern_from_meta("file"),
    )
)


def poison(
    x: torch.Tensor,
    y: torch.Tensor,
    trigger: Trigger,
    target: int | Target,
    rate: float,
    seed: int = 0,
    clean_label: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stamp the trigger on a seeded ``rate`` share (of all ``len(y)`` images) of the images the attack can
    flip and relabel them; ``clean_label``: stamp it on images of the target class instead, labels left as they
    are (as SIG and label-consistent attacks do; capped at the class's size).

    Returns (x, y, poisoned) where ``poisoned`` marks the altered samples.
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"poison rate must be in [0, 1], got {rate}")
    target = as_target(target)
    if clean_label and target.all_to_all:
        raise ValueError("a clean-label attack needs one target class, not all-to-all")
    candidates = ((y == target.label) if clean_label else target.flippable(y)).nonzero().flatten()
    n = int(round(rate * len(y)))
    chosen = candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:n]]
    x, y = x.clone(), y.clone()
    x[chosen] = trigger.apply(x[chosen])
    y[chosen] = target.labels_for(y[chosen])  # unchanged for clean-label: they already carry the target
    poisoned = torch.zeros(len(y), dtype=torch.bool)
    poisoned[chosen] = True
    return x, y, poisoned
