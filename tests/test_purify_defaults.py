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
    assert report["defense"] == "clp-ar" and DEFENSES["clp-ar"].recommended
    assert (report["config"]["metric"], report["config"]["reg"]) == DEFENSES["clp-ar"].marking
    assert set(report) >= {"before", "after", "steps", "seconds"} and report["steps"] == 3
    for key in ("before", "after"):
        assert set(report[key]) == {"clean_acc", "asr"}


def test_purify_defense_bs_ar_is_the_papers_marking(capsys):
    report = _purify(capsys, "--defense", "bs-ar")
    assert report["defense"] == "bs-ar" and DEFENSES["bs-ar"].paper
    assert (report["config"]["metric"], report["config"]["reg"]) == ("benign", "ar")
    own = _purify(capsys, "--metric", "magnitude", "--reg", "l1")
    assert own.get("defense") is None and (own["config"]["metric"], own["config"]["reg"]) == ("magnitude", "l1")
