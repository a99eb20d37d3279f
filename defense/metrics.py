"""Clean accuracy and attack success rate (ASR)."""
from __future__ import annotations

import torch
from torch import nn

from .attacks import Trigger
from .data import TensorData


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(x[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def triggered_set(test: TensorData, trigger: Trigger, target: int) -> TensorData:
    """Triggered copies of the test images whose true label is not the target."""
    keep = test.y != target
    return TensorData(trigger.apply(test.x[keep]), torch.full((int(keep.sum()),), target, dtype=torch.int64))


def accuracy(model: nn.Module, data: TensorData) -> float:
    if len(data) == 0:
        return float("nan")
    return float((predict(model, data.x) == data.y).float().mean())


def evaluate(model: nn.Module, test: TensorData, trigger: Trigger, target: int,
             triggered: TensorData | None = None) -> dict[str, float]:
    """{'clean_acc', 'asr'} as fractions; ASR counts only images whose true label is not the target."""
    triggered = triggered if triggered is not None else triggered_set(test, trigger, target)
    return {"clean_acc": accuracy(model, test), "asr": accuracy(model, triggered)}
