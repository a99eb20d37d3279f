"""Purifying by regularized fine-tuning: the penalties, the settings and the run.

``Purification`` fine-tunes a copy of the model on clean data as a step generator, with a
penalty on the marked neurons' parameters: ``ar`` (adaptive), ``l1``, ``l2``, ``none``
(plain fine-tuning) or ``prune`` (zeroed, then fine-tuned with them held at zero).
Marking and previews are in ``masking.py``, neurons and their masks in ``neurons.py``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import salience
from .data import TensorData
from .guard import CheckpointGuard, neuron_sensitivity
from .masking import mark
from .metrics import evaluate
from .neurons import NeuronMask, NeuronScores, marked_count, neuron_map, prune
from .registry import SCORES

REGULARIZERS = ("ar", "l1", "l2", "none", "prune")
SCHEDULES = ("fixed", "dynamic")


# ---------------------------------------------------------------- penalties


def ar_penalty(w: torch.Tensor, knee: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Adaptive regularization φ summed: |w| up to the knee κ, κ·exp(|w|/κ − 1) beyond.

    Continuous, with a continuous slope, at |w| = κ and symmetric in w: large weights of
    either sign are pushed back ever harder. (The reference code uses κ = 1 and exp(w − 1),
    whose gradient for w < −1 pushes weights further out; see docs/METHOD.md.)
    """
    a = w.abs()
    return torch.where(a <= knee, a, knee * torch.exp(a / knee - 1)).sum()


def penalty(kind: str, w: torch.Tensor, knee: float | torch.Tensor = 1.0) -> torch.Tensor:
    if kind == "ar":
        return ar_penalty(w, knee)
    if kind == "l1":
        return w.abs().sum()
    if kind == "l2":
        return (w * w).sum()
    return w.new_zeros(())


# ---------------------------------------------------------------- purification


def nonfinite_weights(model: nn.Module) -> list[str]:
    """Names of the model's floating-point parameters and buffers that hold NaN or infinite values."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]


@dataclass
class PurifyConfig:
    """Purification settings. The defaults are the base every defense starts from (``clp-ar``'s settings); a
    defense may fix some (``bs-ar``: no distillation) or bring its own values for the ones a caller left at
    these defaults (the recommended ``nc-ar``: 10% marked; ``baselines.settings_for``).
    docs/METHOD.md and bench/RESULTS.md say how they were chosen."""

    metric: str = "clp"  # a run with no defense named marks with CLP; bs-ar (the paper) "benign", nc-ar "inversion"
    reg: str = "ar"
    ratio: float = 0.4  # share marked per layer: 0.4 passed more runs than 0.5, bundled and unseen (METHOD.md)
    scope: str = "layer"
    lam: float = 0.03
    lr: float = 0.02
    steps: int = 300
    batch_size: int = 64
    seed: int = 0
    schedule: str = "fixed"
    knee: str = "scale"  # 'scale': κ = knee_scale × RMS of the parameter tensor at the start; 'reference': κ = 1
    knee_scale: float = 2.0
    augment: bool = True
    freeze_bn: bool = False  # keep BatchNorm's running statistics as trained
    distill: float = 0.9  # weight of distillation from the original model's clean outputs (0 = off)
    temperature: float = 2.0
    teacher_input: str = "augmented"  # what the teacher sees: the student's 'augmented' batch or the 'clean' one
    warmup: float = 0.0  # share of the steps spent warming the learning rate up linearly
    anchor: float = 0.0  # weight of Σ(w − w₀)² over the parameters that are not marked (L2-SP; 0 = off)
    # share of each batch stamped with the trigger reverse-engineered from the clean images (the inversion score's),
    # kept at its true label: Neural Cleanse's unlearning (0 = off)
    reversed_share: float = 0.0
    reversed_count: int = 1  # how many of the smallest reversed triggers that share carries (the suspected one first)
    eval_every: int = 25
    guard: str = (
        "none"  # 'sensitivity': end on the checkpoint least sensitive to neuron perturbation (defense/guard.py)
    )
    guard_eps: float = 0.4
    layer_names: list[str] | None = None  # None: every hidden neuron layer

    def validate(self) -> PurifyConfig:
        problems = []
        if self.metric not in SCORES:
            problems.append(f"metric must be one of {', '.join(SCORES.names())}")
        if self.reg not in REGULARIZERS:
            problems.append(f"regularizer must be one of {', '.join(REGULARIZERS)}")
        if not 0 <= self.ratio <= 1:
            problems.append(f"ratio must be in [0, 1], got {self.ratio}")
        if not (self.lam >= 0 and math.isfinite(self.lam)):
            problems.append(f"λ must be zero or positive, got {self.lam}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"learning rate must be positive, got {self.lr}")
        if self.steps < 0 or (self.steps == 0 and self.reg != "prune"):
            problems.append(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            problems.append(f"batch size must be at least 1, got {self.batch_size}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}")
        if self.knee not in ("scale", "reference"):
            problems.append("knee must be 'scale' or 'reference'")
        if not self.knee_scale > 0:
            problems.append("knee_scale must be positive")
        if not 0 <= self.distill <= 1:
            problems.append(f"distillation weight must be in [0, 1], got {self.distill}")
        if not self.temperature > 0:
            problems.append("temperature must be positive")
        if not (self.anchor >= 0 and math.isfinite(self.anchor)):
            problems.append(f"anchor weight must be zero or positive, got {self.anchor}")
        if not 0 <= self.reversed_share <= 1:
            problems.append(f"reversed_share must be in [0, 1], got {self.reversed_share}")
        if self.reversed_count < 1:
            problems.append(f"reversed_count must be at least 1, got {self.reversed_count}")
        if not 0 <= self.warmup < 1:
            problems.append("warmup must be in [0, 1)")
        if self.guard not in ("none", "sensitivity"):
            problems.append("guard must be 'none' or 'sensitivity'")
        if self.eval_every < 1:
            problems.append("eval_every must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels: cheap augmentation for a small clean set."""
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    return torch.roll(F.pad(x, [max_shift] * 4), shifts=(dy, dx), dims=(2, 3))[
        ..., max_shift:-max_shift, max_shift:-max_shift
    ]


@dataclass
class Purification:
    """Fine-tune a *copy* of ``model`` on ``clean`` with a penalty on the marked neurons.

    Iterate it to run: every step yields a record (task loss, the plain clean cross-entropy of the
    batch (``clean_ce``, without penalty or distillation, comparable across defenses), penalty, norm of the marked
    parameters, and, every ``eval_every`` steps and at the end, clean accuracy and ASR on
    ``test``/``triggered``). ``stop()`` ends the run after the current step. The purified
    model is ``self.model``; the records are kept in ``self.history``.
    """

    model: nn.Module
    clean: TensorData
    test: TensorData
    triggered: TensorData
    config: PurifyConfig = field(default_factory=PurifyConfig)
    scores: NeuronScores | None = None  # precomputed scores of config.metric on the original model
    mask: NeuronMask | None = None  # a fixed mask chosen elsewhere (baselines); overrides the ratio

    def __post_init__(self):
        self.config.validate()
        if len(self.clean) == 0 and not (self.config.steps == 0 and self.mask is not None):  # CLP needs no data
            raise ValueError("the clean subset is empty: purification needs clean images")
        self.teacher = copy.deepcopy(self.model).eval() if self.config.distill > 0 else None
        self.model = copy.deepcopy(self.model)
        # where the anchor pulls back to (the model as given)
        self._start = [p.detach().clone() for p in self.model.parameters()] if self.config.anchor > 0 else []
        self.history: list[dict] = []
        self._stop = False
        self.layers = neuron_map(self.model)
        if self.config.layer_names is not None:
            unknown = set(self.config.layer_names) - set(self.layers)
            if unknown:
                raise ValueError(f"unknown layer(s): {', '.join(sorted(unknown))}")
            self.layers = {n: self.layers[n] for n in self.config.layer_names}
        self.tracker = None
        self.guard = CheckpointGuard() if self.config.guard == "sensitivity" else None
        if self.scores is None or self.config.schedule == "dynamic":
            if self.config.metric == "benign":  # only benign salience keeps a running tracker (dynamic schedule)
                self.scores, self.tracker = salience.benign_salience(self.model, self.clean, layers=self.layers)
            elif self.scores is None:
                self.scores = salience.compute(self.config.metric, self.model, self.clean, self.layers)
        self.scores = NeuronScores(
            self.scores.metric, {n: self.scores.layers[n] for n in self.layers}, self.scores.details
        )
        self.reversed_trigger = None  # the inversion score's smallest reversed triggers, for reversed_share
        if self.config.reversed_share > 0:
            from .scores import inversion  # loads every score module; only this option needs one

            found = self.scores.details.get("candidates")  # those that came with the score, else reversed here
            if found is None:
                found = inversion.candidates(inversion.reverse(self.model, self.clean)[0])
            self.reversed_trigger = inversion.TriggerMix(found[: self.config.reversed_count])
        self._fixed_mask = self.mask
        self.mask = self._mark(0)
        cfg = self.config
        # each tensor's AR knee, from its scale before any step (so marked_norm() works before iterating too)
        self._knees = {
            id(p): (
                1.0 if cfg.knee == "reference" else max(cfg.knee_scale * float(p.detach().pow(2).mean().sqrt()), 1e-3)
            )
            for nl in self.layers.values()
            for p in nl.neuron_params()
        }

    def _anchor_penalty(self) -> torch.Tensor:
        """Σ(w − w₀)² over every parameter entry that is not marked: keeps what the clean task uses where it was."""
        marked = {id(p): m for p, m, _ in self._marked_params()}
        total = None
        for p, p0 in zip(self.model.parameters(), self._start, strict=True):
            d = (p - p0) ** 2
            m = marked.get(id(p))
            term = d[~m].sum() if m is not None else d.sum()
            total = term if total is None else total + term
        return total

    def _ratio_at(self, step: int) -> float:
        """Fixed: the configured ratio. Dynamic (reference schedule): grows from β·ratio to ratio, β = 0.5."""
        if self.config.schedule == "fixed":
            return self.config.ratio
        beta = 0.5
        return self.config.ratio * (beta + (1 - beta) * step / self.config.steps)

    def _mark(self, step: int) -> NeuronMask:
        if self._fixed_mask is not None:
            return {n: self._fixed_mask[n].clone() for n in self.layers}
        if self.config.reg == "none":
            return {n: torch.zeros(nl.size, dtype=torch.bool) for n, nl in self.layers.items()}
        return mark(self.scores, ratio=self._ratio_at(step), scope=self.config.scope)

    def _marked_params(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """(parameter, boolean mask of its marked entries, knee) for every marked neuron."""
        out = []
        for name, m in self.mask.items():
            if not m.any():
                continue
            for p in self.layers[name].neuron_params():
                dev_m = m.to(p.device)
                out.append((p, dev_m, self._knees[id(p)]))
        return out

    @staticmethod
    def _add_penalty_grad(lam: float, pen: torch.Tensor, marked: list, lr: float) -> None:
        """Add λ × the penalty's gradient to the marked parameters' gradients, each entry limited so that the
        penalty's own step (lr × gradient) cannot carry a weight past zero, the penalty's minimum.

        AR's slope beyond the knee, exp(|w|/κ − 1), is unbounded: on a heavy-tailed tensor (a wide linear
        layer whose largest weights sit 8× beyond the knee) one step overshoots zero, the next is exponentially
        larger, and the run diverges within a few steps. The limit never cuts below λ, the penalty's linear
        slope, so L1, AR below the knee, and L2 wherever λ·lr < ½, are unchanged."""
        params = list(dict.fromkeys(p for p, _, _ in marked))
        for p, g in zip(params, torch.autograd.grad(lam * pen, params), strict=True):
            if lr > 0:  # a zero step needs no limit (and |w| / 0 would be NaN at w = 0)
                slope = lam if lam <= torch.finfo(p.dtype).max else math.inf  # as the tensor's dtype holds λ
                limit = (p.detach().abs() / lr).clamp_min(slope)
                g = torch.maximum(torch.minimum(g, limit), -limit)
            p.grad = g if p.grad is None else p.grad.add_(g)

    def stop(self) -> None:
        self._stop = True

    def marked_norm(self) -> float:
        with torch.no_grad():
            return math.sqrt(sum(float((p[m] ** 2).sum()) for p, m, _ in self._marked_params()))

    def _evaluate(self) -> dict[str, float]:
        self.model.eval()
        scores = evaluate(self.model, self.test, None, 0, triggered=self.triggered)
        if self.guard is not None:  # clean data only: what the rebound guard may use (the ASR is for display)
            scores["sensitivity"] = neuron_sensitivity(
                self.model, self.layers, self.clean, self.config.guard_eps, seed=self.config.seed
            )
        self._train_mode()
        return scores

    def _train_mode(self) -> None:
        self.model.train()
        if self.config.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def __iter__(self) -> Iterator[dict]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        dev = next(self.model.parameters()).device
        opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=0.9)
        warmup = max(1, int(cfg.warmup * cfg.steps))
        # a short linear warm-up, then cosine decay: the first large steps are what costs clean accuracy
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda t: (
                min(1.0, (t + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(t, cfg.steps) / max(cfg.steps, 1)))
            ),
        )
        loss_fn = nn.CrossEntropyLoss()
        start = time.perf_counter()
        before = self._evaluate()
        self.history.append(
            {
                "step": 0,
                "task_loss": float("nan"),
                "clean_ce": float("nan"),
                "penalty": 0.0,
                "marked_norm": self.marked_norm(),
                "marked": marked_count(self.mask),
                "seconds": 0.0,
                **before,
            }
        )
        yield self.history[-1]
        if cfg.reg == "prune":
            prune(self.layers, self.mask)
        self._train_mode()
        step, batches = 0, iter(())
        while step < cfg.steps and not self._stop:
            try:
                xb, yb = next(batches)
            except StopIteration:
                batches = self.clean.batches(cfg.batch_size, generator=gen)
                continue
            step += 1
            xb, yb = xb.to(dev), yb.to(dev)
            x_clean = xb
            if cfg.augment:
                xb = _shift(xb, gen)
            t_in = x_clean if cfg.teacher_input == "clean" else xb  # never the stamped images: the teacher obeys them
            if self.reversed_trigger is not None:
                k = int(round(cfg.reversed_share * len(xb)))
                xb = torch.cat([self.reversed_trigger.apply(xb[:k]), xb[k:]])
            opt.zero_grad(set_to_none=True)
            logits = self.model(xb)
            task = loss_fn(logits, yb)
            clean_ce = float(task.detach())  # the same quantity for every defense: the loss panel plots it
            if self.teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(self.teacher(t_in) / cfg.temperature, dim=1)
                kd = F.kl_div(F.log_softmax(logits / cfg.temperature, dim=1), soft, reduction="batchmean")
                task = (1 - cfg.distill) * task + cfg.distill * cfg.temperature**2 * kd
            if not torch.isfinite(task):
                raise FloatingPointError(
                    f"training diverged at step {step} (the loss is not finite): lower the learning rate or λ"
                )
            task.backward()
            if self.tracker is not None and cfg.schedule == "dynamic":
                self.tracker.update()
            marked = self._marked_params()
            pen = sum((penalty(cfg.reg, p[m], knee) for p, m, knee in marked), torch.zeros((), device=dev))
            if cfg.reg in ("ar", "l1", "l2") and marked and cfg.lam > 0:
                self._add_penalty_grad(cfg.lam, pen, marked, opt.param_groups[0]["lr"])
            if cfg.anchor > 0:
                (cfg.anchor * self._anchor_penalty()).backward()
            opt.step()
            sched.step()
            if cfg.reg == "prune":
                prune(self.layers, self.mask)
            if cfg.schedule == "dynamic" and self.tracker is not None:
                self.scores = self.tracker.per_neuron(self.layers)
                self.mask = self._mark(step)
            elif cfg.schedule == "dynamic":
                self.mask = self._mark(step)
            record = {
                "step": step,
                "task_loss": float(task.detach()),
                "clean_ce": clean_ce,
                "penalty": float(pen.detach()),
                "marked_norm": self.marked_norm(),
                "marked": marked_count(self.mask),
                "seconds": time.perf_counter() - start,
            }
            if step % cfg.eval_every == 0 or step == cfg.steps or self._stop:
                record.update(self._evaluate())
                if self.guard is not None:
                    self.guard.offer(self.model, step, record["sensitivity"])
            self.history.append(record)
            yield record
        if cfg.reg == "prune" and step == 0:
            self.history.append(
                {
                    **self.history[-1],
                    "marked_norm": self.marked_norm(),
                    "seconds": time.perf_counter() - start,
                    **self._evaluate(),
                }
            )
            yield self.history[-1]
        bad = nonfinite_weights(self.model)
        if bad:  # a huge λ or learning rate can blow the weights up in one step while the loss looked fine
            self.model.eval()
            raise FloatingPointError(
                f"training diverged: the weights hold NaN or infinite values after step {step} "
                f"(in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); lower the learning rate or λ"
            )
        if "clean_acc" not in self.history[-1]:
            self.history[-1].update(self._evaluate())
        if self.guard is not None and self.guard.best_step not in (None, step):
            best = self.guard.restore(self.model)
            self.history.append(
                {**self.history[-1], **self._evaluate(), "checkpoint": best, "seconds": time.perf_counter() - start}
            )
            yield self.history[-1]
        self.model.eval()

    def run(self) -> dict:
        """Run to the end; returns the report {'before', 'after', 'steps', 'seconds', 'config'} (results.py)."""
        from .results import run_report  # results builds on this module

        for _ in self:
            pass
        return run_report(self.history, self.config)
