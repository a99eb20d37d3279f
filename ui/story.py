"""The sentences the pages say about a chart, written from the numbers measured for the current model.

Pure functions (no Streamlit): each takes measured values and returns one or two plain sentences, so a
page never states a fixed claim that its own chart may contradict. Rates are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from defense.targets import Target, as_target

ASR_GOAL = 0.2  # "the attack is broken": attack success at or below this
ASR_GONE = 0.05  # "the attack is gone"
ACC_HELD = 0.03  # accuracy "held": within this of where it started
ACC_SPARED = 0.05  # zeroing "spares" accuracy: within this of the model's


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def share(x: float) -> str:
    return f"{100 * x:.0f}%"


def auc_phrase(auc: float) -> str:
    """How well an ROC AUC ranks infected neurons, in words."""
    if auc < 0.45:
        return "worse than chance"
    if auc < 0.55:
        return "no better than chance"
    if auc < 0.7:
        return "only somewhat better than chance"
    if auc < 0.85:
        return "well"
    return "very well"


def salience_verdict(aucs: Mapping[str, float], featured: str, labels: Mapping[str, str], pending: int = 0) -> str:
    """Answers "does this score find the backdoor?" from each score's measured ROC AUC (``aucs``: name → AUC).

    ``pending``: how many scores are still being measured; the comparison then says it is one of those so far.
    """
    label = labels.get(featured, featured)
    auc = aucs[featured]
    best = max(aucs, key=aucs.get)
    answer = "Yes" if auc >= 0.7 else ("Partly" if auc >= 0.55 else "No")
    first = f"{answer}: here {label} ranks infected neurons {auc_phrase(auc)} (AUC {auc:.2f})"
    waiting = (
        f", while {pending} slower score{'s are' if pending > 1 else ' is'} still being measured in the background"
        if pending
        else ""
    )
    if best == featured:
        others = sorted((a for n, a in aucs.items() if n != featured), reverse=True)
        so_far = " measured so far" if pending else ""
        tail = f", the best of the {len(aucs)} scores{so_far} (next best {others[0]:.2f})" if others else ""
        return first + tail + waiting + "."
    so_far = "so far " if pending else ""
    return first + f"; {so_far}{labels.get(best, best)} does best ({aucs[best]:.2f})" + waiting + "."


def reversed_trigger_verdict(details: Mapping, declared_target: int | Target | None) -> str:
    """What Neural Cleanse's reverse-engineering found (the inversion score's ``details``), in words."""
    sizes = details["sizes"]
    target = details["suspected_target"]
    others = sorted(v for k, v in sizes.items() if k != target)
    median = others[len(others) // 2] if others else float("nan")
    a = details["anomaly_index"]
    outlier = "an outlier: a backdoor is likely" if a > 2 else "not an outlier (Neural Cleanse's bar is 2)"
    text = (
        f"Suspected target: **label {target}**. Its reversed trigger covers {sizes[target]:.1f} pixels' worth of "
        f"mask against a median of {median:.1f} for the other labels (anomaly index {a:.1f}, {outlier})."
    )
    if isinstance(declared_target, Target) and declared_target.all_to_all:
        return text + (
            " The bundle declares an all-to-all backdoor, which has no single target: Neural Cleanse's premise does "
            "not hold, and the reversed triggers show at best one of the labels the backdoor reaches."
        )
    if isinstance(declared_target, Target):
        declared_target = declared_target.label
    if declared_target is not None:
        agree = "the same label" if declared_target == target else f"label {declared_target}, not this one"
        text += f" The bundle declares {agree}."
    return text


def stability_verdict(spearman_min: float, hardest: Mapping, median_spearman_min: float | None = None) -> str:
    """Is benign salience steady across clean subsets, and how much of it the few hardest images carry."""
    steady = spearman_min >= 0.8
    first = (
        f"Benign salience ranks the neurons much the same on every subset here (lowest rank correlation "
        f"{spearman_min:.2f})."
        if steady
        else f"Benign salience reorders the neurons from one subset to the next here (lowest rank correlation "
        f"{spearman_min:.2f}; 0.8 would be steady)."
    )
    k, n, carried, rho = hardest["images"], hardest["of"], hardest["share"], hardest["spearman"]
    second = (
        f" On the first subset the {k} hardest of its {n} images (highest loss) carry {share(carried)} of it"
        f" and rank the neurons alone at {rho:.2f} agreement with the whole"
    )
    if carried >= 0.5 and rho >= 0.8:
        second += (
            ": the model fits the other images, so they add next to nothing, and the score mostly reflects which "
            "few hard images a subset happens to hold."
        )
    elif carried < 0.5:
        second += ": the score is spread over many images, not held by a few."
    else:
        second += ": they carry much of it, but the other images still move its order."
    if median_spearman_min is None:
        return first + second
    steadier = "steadier" if median_spearman_min > spearman_min else "no steadier"
    third = (
        f" Its median over images (the score *benign salience, median over images*) is {steadier}: lowest rank "
        f"correlation {median_spearman_min:.2f}."
    )
    return first + second + third


def model_verdict(clean_acc: float, asr: float, target: int | Target) -> str:
    if asr >= 0.8:
        return (
            f"This model is backdoored: {pct(asr)} of triggered images go to {as_target(target)}, "
            f"while it reads {pct(clean_acc)} of clean digits correctly."
        )
    if asr >= ASR_GOAL:
        return (
            f"The trigger works on {pct(asr)} of images (clean accuracy {pct(clean_acc)}): a partial backdoor, "
            "harder to see in the numbers."
        )
    return (
        f"The trigger sends only {pct(asr)} of images to {as_target(target)}: there is little backdoor to remove "
        f"(clean accuracy {pct(clean_acc)})."
    )


def attribution_verdict(on_trigger: float | None, covered: float | None, target: int | Target) -> str:
    """What the attribution maps of triggered images show (share of attribution on the trigger's pixels)."""
    if on_trigger is None or covered is None:
        return (
            f"Integrated gradients toward {as_target(target)}, each map scaled to its own maximum (square-root colour "
            "scale). This trigger covers "
            "the whole image, so the maps cannot single out a trigger region: the enlarged trigger shows what the "
            "model responds to."
        )
    if on_trigger >= 3 * covered:
        what = "the model looks at the trigger far more than its size would suggest"
    else:
        what = "the attribution is not concentrated on the trigger"
    return (
        f"Integrated gradients toward {as_target(target)}, each map scaled to its own maximum (square-root colour "
        f"scale): {share(on_trigger)} of "
        f"the attribution falls on the trigger, which covers {pct(covered)} of the image, so {what}."
    )


def _first_below(points: Sequence[Mapping], goal: float) -> Mapping | None:
    return next((p for p in points if p["asr"] <= goal), None)


def pruning_verdict(
    curves: Mapping[str, Sequence[Mapping]],
    featured: str,
    base: Mapping[str, float],
    labels: Mapping[str, str],
    goal: float = ASR_GOAL,
) -> str:
    """What the pruning curve shows: for ``featured``, does the attack collapse before the accuracy does?

    ``curves``: score → points {ratio, clean_acc, asr} in increasing ratio; ``base``: the unpruned model.
    """
    label = labels.get(featured, featured)
    if base["asr"] <= goal:
        return f"The unpruned model's attack success is already {pct(base['asr'])}: there is no backdoor to prune."
    hit = _first_below(curves[featured], goal)
    if hit is None:
        last = curves[featured][-1]
        first = (
            f"With {label}, zeroing the most suspect neurons never brings the attack below {share(goal)} "
            f"(still {pct(last['asr'])} with {share(last['ratio'])} zeroed)."
        )
    elif hit["clean_acc"] >= base["clean_acc"] - ACC_SPARED:
        first = (
            f"With {label}, the attack collapses first: zeroing {share(hit['ratio'])} of the neurons brings it to "
            f"{pct(hit['asr'])} while accuracy is still {pct(hit['clean_acc'])}."
        )
    else:
        first = (
            f"With {label}, accuracy goes first: by the time the attack is below {share(goal)} "
            f"({share(hit['ratio'])} zeroed), accuracy is down to {pct(hit['clean_acc'])}."
        )

    def merit(name: str) -> tuple:
        p = _first_below(curves[name], goal)
        return (-1.0, 0.0) if p is None else (p["clean_acc"], -p["ratio"])

    best = max(curves, key=merit)
    if best != featured and merit(best) > merit(featured):
        p = _first_below(curves[best], goal)
        first += (
            f" {labels.get(best, best).capitalize()} does better here: {pct(p['asr'])} attack at "
            f"{pct(p['clean_acc'])} accuracy with {share(p['ratio'])} zeroed."
        )
    return first


def choice_verdict(marked_share: float, clean_acc: float, asr: float, base: Mapping[str, float]) -> str:
    """What zeroing the current choice does, in words."""
    head = f"Zeroing your choice ({share(marked_share)} of the neurons) with no fine-tuning"
    if asr <= ASR_GOAL and clean_acc >= base["clean_acc"] - ACC_SPARED:
        return f"{head} already breaks the attack ({pct(asr)}) and keeps accuracy ({pct(clean_acc)})."
    if asr <= ASR_GOAL:
        return (
            f"{head} breaks the attack ({pct(asr)}) but costs accuracy ({pct(clean_acc)}): "
            "fine-tuning must win it back."
        )
    if clean_acc < base["clean_acc"] - ACC_SPARED:
        return f"{head} costs accuracy ({pct(clean_acc)}) before it breaks the attack ({pct(asr)} still succeed)."
    return f"{head} leaves the attack working ({pct(asr)}): the backdoor is elsewhere, or needs fine-tuning."


def run_verdict(label: str, evals: Sequence[Mapping]) -> str:
    """One run's story from its evaluations ({step, clean_acc, asr}, in step order)."""
    before, after = evals[0], evals[-1]
    if len(evals) < 2:  # stopped before the first step (CLP, which takes none, has a second evaluation)
        return f"{label}: stopped before its first step; nothing changed."
    low = min(evals, key=lambda e: e["clean_acc"])
    b, a = before["clean_acc"], after["clean_acc"]
    if low["clean_acc"] >= b - ACC_HELD and a >= b - ACC_HELD:
        acc = f"accuracy held ({pct(b)} → {pct(a)})"
    elif a >= b - ACC_HELD:
        acc = f"accuracy dipped to {pct(low['clean_acc'])} at step {low['step']} and recovered to {pct(a)}"
    else:
        acc = f"accuracy fell from {pct(b)} to {pct(a)}"
        if low["clean_acc"] < a - 0.01:
            acc += f" (lowest {pct(low['clean_acc'])} at step {low['step']})"
    sb, sa = before["asr"], after["asr"]
    if sa <= ASR_GONE:
        asr = f"the attack is gone ({pct(sb)} → {pct(sa)})"
    elif sa <= sb / 2:
        asr = f"the attack is weakened ({pct(sb)} → {pct(sa)})"
    else:
        asr = f"the attack survives ({pct(sb)} → {pct(sa)})"
    return f"{label}: {acc}; {asr}."


def runs_comparison(results: Iterable[tuple[str, Mapping, Mapping]]) -> str:
    """Which of several finished runs (label, before, after) did best; empty for fewer than two."""
    results = list(results)
    if len(results) < 2:
        return ""
    kept = [r for r in results if r[2]["clean_acc"] >= r[1]["clean_acc"] - ACC_HELD]
    if kept:
        label, _, after = min(kept, key=lambda r: r[2]["asr"])
        return (
            f"Of these runs, {label} leaves the least attack ({pct(after['asr'])}) with accuracy within "
            f"{100 * ACC_HELD:.0f} points ({pct(after['clean_acc'])})."
        )
    label, _, after = min(results, key=lambda r: r[2]["asr"])
    return (
        f"No run kept accuracy within {100 * ACC_HELD:.0f} points; the least attack is left by {label} "
        f"({pct(after['asr'])} at {pct(after['clean_acc'])} accuracy)."
    )


def pair_verdict(plain: tuple[str, Mapping], distilled: tuple[str, Mapping]) -> str:
    """What self-distillation adds, from a run without it and its pair with it (label, after)."""
    (pl, pa), (dl, da) = plain, distilled
    diff = pa["asr"] - da["asr"]
    if abs(diff) < 0.02:
        what = "distillation changes little here"
    elif diff > 0:
        what = f"distillation removes {100 * diff:.1f} more points of attack"
    else:
        what = f"distillation leaves {100 * -diff:.1f} more points of attack"
    return (
        f"{dl} (with distillation) ends at {pct(da['clean_acc'])} / {pct(da['asr'])}, {pl} (without) at "
        f"{pct(pa['clean_acc'])} / {pct(pa['asr'])} (accuracy / attack): {what}."
    )


def purified_attribution_verdict(
    before: float | None, after: float | None, covered: float | None, target: int | Target
) -> str:
    head = (
        f"Integrated gradients toward {as_target(target)} on triggered images, before and after, each map scaled to "
        "its own maximum on a square-root colour scale (so a map says where the pull toward the target comes from, "
        "not how strong it is)"
    )
    if before is None or after is None:
        return head + "."
    if after <= before / 2:
        what = f"the purified model no longer leans on the trigger to reach {as_target(target)}"
    else:
        what = f"the trigger still draws the purified model's attention toward {as_target(target)}"
    return (
        f"{head}. On the trigger ({pct(covered)} of the image): {share(before)} of the attribution before, "
        f"{share(after)} after: {what}."
    )


def next_step(page: str, **ctx) -> str:
    """The closing sentence of each page: what to look at next."""
    if page == "model":
        return (
            f"Next: which of the {ctx.get('neurons', 'model')} neurons carry this backdoor? "
            "The Neuron salience page scores every one."
        )
    if page == "salience":
        best = ctx.get("best")
        if best and best != ctx.get("featured"):
            return (
                f"Next: on the Threshold page, mark neurons by {best} (the best score here) and by "
                f"{ctx.get('featured_label', 'benign salience')}, and see what zeroing them does."
            )
        return (
            "Next: on the Threshold page, choose how many of the most suspect neurons to mark, "
            "and see what zeroing them does."
        )
    if page == "threshold":
        return (
            "Next: Purify fine-tunes the model while penalizing marked neurons. Each defense marks by its own "
            f"score with the share set here ({ctx.get('marked', 'the')} neurons by {ctx.get('score', 'this score')}; "
            "a score cut applies only to the defense that marks by this score); run the paper's bs-ar and a "
            "baseline pair such as ft and ft-kd."
        )
    if page == "purify":
        missing = ctx.get("missing")
        if ctx.get("runs", 0) == 0:
            return (
                "Next: start the paper's bs-ar, then our bs-ar-kd and plain ft, "
                "to see what marking and distillation each add."
            )
        if missing:
            return f"Next: run {missing} to complete the pair, so the class sees what the -kd additions change."
        if ctx.get("compare"):
            return "Next: the Compare page puts every run side by side."
        return (
            "Next: try another model on the Model page (the invisible wanet trigger is a good one), "
            "or reset for the next class."
        )
    if page == "compare":
        return "Next: try another model on the Model page, or reset for the next class from the sidebar."
    raise ValueError(f"no next step for page '{page}'")
