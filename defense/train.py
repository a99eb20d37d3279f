"""Training a backdoored model: the attacker's side, used to build the bundled models."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from . import models
from .attacks import Trigger, poison
from .bundle import Bundle
from .data import DataSplits
from .metrics import evaluate
from .runtime import device
from .targets import Target


def train_backdoored(
    splits: DataSplits,
    trigger: Trigger,
    target: int | Target,
    poison_rate: float = 0.1,
    arch: str = models.DEFAULT_ARCH,
    epochs: int = 8,
    seed: int = 0,
    lr: float = 0.05,
    batch_size: int = 64,
    progress: bool = True,
    arch_kwargs: dict | None = None,
    shift: int = 0,
    clean_label: bool = False,
) -> tuple[Bundle, torch.Tensor]:
    """Train on a poisoned copy of the training set. Returns the bundle and the poisoned-sample mask.

    ``shift``: augment the clean training images by random translations of up to this many
    pixels (poisoned images stay put, so the trigger keeps its place). ``clean_label``: poison only
    images of the target class and keep their labels (``attacks.poison``).
    """
    target = Target.parse(target, splits.num_classes)
    torch.manual_seed(seed)
    mean, std = splits.normalization()
    arch_kwargs = dict(arch_kwargs or {})
    try:
        model = models.build(arch, splits.num_classes, splits.input_shape, mean, std, **arch_kwargs).to(device())
    except TypeError as err:  # an option the architecture does not take
        raise ValueError(f"architecture '{arch}' cannot be built with {arch_kwargs} ({err})") from None
    x, y, poisoned = poison(splits.train.x, splits.train.y, trigger, target, poison_rate, seed, clean_label)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = (len(y) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(epochs), desc="train", unit="epoch", disable=not progress):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            if shift:
                xb = random_shift(xb, ~poisoned[idx], shift, gen)
            xb, yb = xb.to(device()), yb.to(device())
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
            sched.step()
    model.eval()
    scores = evaluate(model, splits.test, trigger, target)
    meta = {
        "architecture": arch,
        "arch_kwargs": arch_kwargs,
        "dataset": splits.name,
        "num_classes": splits.num_classes,
        "input_shape": splits.input_shape,
        "normalization": {"mean": mean, "std": std},
        "attack": {
            "kind": trigger.kind,
            "target_label": target.meta_value(),
            "poison_rate": poison_rate,
            "params": trigger.params(),
            **({"clean_label": True} if clean_label else {}),
        },
        "clean_acc": round(scores["clean_acc"], 4),
        "asr": round(scores["asr"], 4),
        "seed": seed,
        "training": {
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "optimizer": "SGD momentum 0.9, one-cycle",
            "shift": shift,
        },
    }
    return Bundle(model.cpu(), meta, trigger), poisoned


def random_shift(x: torch.Tensor, which: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate the images selected by ``which`` by up to ``shift`` pixels each way (zero fill)."""
    out = x.clone()
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
    h, w = x.shape[-2:]
    offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=gen)
    for i in which.nonzero().flatten().tolist():
        dy, dx = offsets[i].tolist()
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out
