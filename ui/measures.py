"""Measured numbers the pages' sentences are written from (ui.story), read from the cached measurements.

Kept apart so that a page's words and its chart come from the same call, and a test can swap the
measurement for chosen numbers (``identification`` is the one place the Salience page reads AUCs from).
"""

from __future__ import annotations

import pandas as pd
import torch

from defense import metrics
from defense.registry import SCORES
from ui.lab import Lab


def identification(lab_: Lab) -> dict[str, dict] | None:
    """Per score: ROC AUC, precision at k, and the ROC curve (fpr, tpr) of finding the infected neurons.

    None until the ablation ground truth is measured (it runs in the background).
    """
    truth = lab_.ground_truth()
    if not truth.done():
        return None
    gt = truth.result()
    infected, measured = gt["infected"], gt["measured"]  # a sample of a big model's neurons was measured
    keep = torch.cat([measured[n] for n in lab_.layers])
    scores = lab_.scores()
    out = {}
    for m in SCORES.names():
        s = scores[m].suspicion()
        fpr, tpr = metrics.roc_curve(
            torch.cat([s[n] for n in lab_.layers])[keep], torch.cat([infected[n] for n in lab_.layers])[keep]
        )
        q = metrics.identification_quality(scores[m], infected, measured)
        out[m] = {"auc": q["auc"], "precision_at_k": q["precision_at_k"], "fpr": fpr, "tpr": tpr}
    return out


def curve_points(curve: pd.DataFrame) -> dict[str, list[dict]]:
    """The pruning curve as score → points {ratio, clean_acc, asr} in increasing ratio (ui.story's input)."""
    return {
        m: part.sort_values("ratio")[["ratio", "clean_acc", "asr"]].to_dict("records")
        for m, part in curve.groupby("metric", sort=False)
    }
