"""What `purify` runs with no options, and the paper's method on request (tiny step counts)."""

from __future__ import annotations

import json

from conftest import MODELS

from defense import cli
from defense.registry import DEFENSES


def _purify(capsys, *extra: str) -> dict:
    assert (
        cli.main(["purify", "--bundle", str(MODELS / "mnist-badnets"), "--steps", "3", "--json", "--quiet", *extra])
        == 0
    )
    return json.loads(capsys.readouterr().out)


def test_purify_without_options_runs_the_recommended_defense(capsys):
    report = _purify(capsys)
    assert report["defense"] == "nc-ar" and DEFENSES["nc-ar"].recommended
    assert (report["config"]["metric"], report["config"]["reg"]) == DEFENSES["nc-ar"].marking
    # its own share, and the unlearning of the reversed trigger
    assert (report["config"]["ratio"], report["config"]["reversed_share"]) == (0.1, 0.4)
    assert set(report) >= {"before", "after", "steps", "seconds"} and report["steps"] == 3
    for key in ("before", "after"):
        assert set(report[key]) == {"clean_acc", "asr"}


def test_purify_defense_bs_ar_is_the_papers_marking(capsys):
    report = _purify(capsys, "--defense", "bs-ar")
    assert report["defense"] == "bs-ar" and DEFENSES["bs-ar"].paper
    assert (report["config"]["metric"], report["config"]["reg"]) == ("benign", "ar")
    own = _purify(capsys, "--metric", "magnitude", "--reg", "l1")
    assert own.get("defense") is None and (own["config"]["metric"], own["config"]["reg"]) == ("magnitude", "l1")


def test_clp_ar_marks_the_channels_with_the_largest_lipschitz_bound():
    import torch

    from defense import baselines, models
    from defense.data import TensorData
    from defense.neurons import neuron_map
    from defense.purify import PurifyConfig

    torch.manual_seed(0)
    net = models.build("small_cnn", 10, (1, 8, 8), [0.5], [0.5], width=4, hidden=6).eval()
    with torch.no_grad():  # make conv1's channel 2 the one that amplifies its input most
        net.net.conv1.weight[2] *= 10
    data = TensorData(torch.rand(16, 1, 8, 8), torch.arange(16) % 10)
    run = baselines.make("clp-ar", net, data, data, data, PurifyConfig(steps=1))
    layers = neuron_map(net)
    for name, nl in layers.items():
        w = nl.layer.weight.detach()
        if nl.bn is not None:
            w = w * (nl.bn.weight / (nl.bn.running_var + nl.bn.eps).sqrt()).abs().view(-1, *[1] * (w.dim() - 1))
        bound = torch.linalg.matrix_norm(w.flatten(2), ord=2) if w.dim() == 4 else w.norm(dim=1)
        top = set(bound.argsort(descending=True)[: round(PurifyConfig().ratio * nl.size)].tolist())
        assert set(run.mask[name].nonzero().flatten().tolist()) == top, name
    assert run.mask["net.conv1"][2]
