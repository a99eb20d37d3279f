"""How well each registered score finds the infected neurons of a model whose trigger is known.

Two truths (docs/METHOD.md, "Ground truth"): the ablation truth (``ablation.ground_truth``, images and
neuron sample by ``ablation.plan``; the one every score is judged against) and trigger-activated change
(``truth.tac_truth``); their agreement is reported, and each score's AUC against TAC too.
"""

from __future__ import annotations

import time

from . import ablation, metrics, truth
from .data import DataSplits
from .neurons import neuron_map
from .registry import SCORES


def identify(bundle, splits: DataSplits, scores: list[str] | None = None, stage=None) -> dict:
    """{'ground_truth': {...}, 'scores': {name: {'auc', 'precision_at_k', 'auc_tac', 'seconds'}}}.

    ``stage(name)``, if given, is called as each measurement starts (the CLI's progress bar)."""
    import defense.scores  # noqa: F401  (registers every score)

    stage = stage or (lambda name: None)
    stage("ground truth")

    model, layers = bundle.model, neuron_map(bundle.model)
    triggered = metrics.triggered_set(splits.test, bundle.trigger, bundle.target)
    gt = ablation.ground_truth(model, layers, splits.test, triggered, max_images=None)
    tac = truth.tac_truth(model, layers, splits.test, bundle.trigger, bundle.target)
    result = {
        "ground_truth": {
            "definition": "ablation: top 10% of neurons by the fall of the triggered images' target-logit margin "
            "when the neuron is zeroed",
            "target": bundle.target.meta_value(),
            "neurons": sum(nl.size for nl in layers.values()),
            "images": gt["images"],
            "sampled": gt["sampled"],
            **truth.agreement(gt, tac),
        },
        "scores": {},
    }
    for name in scores or SCORES.names():
        entry = SCORES[name]
        stage(name)
        start = time.process_time()
        s = entry.compute(model, splits.clean if entry.needs else None, layers)
        q = metrics.identification_quality(s, gt["infected"], gt["measured"])
        q_tac = metrics.identification_quality(s, tac["infected"])
        found = {k: v for k, v in s.details.items() if isinstance(v, int | float | str)}  # e.g. the suspected target
        result["scores"][name] = {
            **q,
            "auc_tac": q_tac["auc"],
            "cpu_seconds": round(time.process_time() - start, 2),
            **found,
        }
    return result
