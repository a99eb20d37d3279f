"""The benchmark scripts under bench/ stay importable as the library changes under them.

They run for minutes to hours and not in CI; an import error (a function moved in defense/) would
otherwise show only when someone next runs the benchmark.
"""

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__"))
def test_bench_script_imports(name):
    module = importlib.import_module(f"bench.{name}")
    assert module.__doc__, f"bench/{name}.py should say what it measures in its docstring"


def test_regularizers_section_counts_divergence_and_steps_over_the_runs_that_got_there():
    from bench import regularizers
    from defense.paths import benchmark_models

    first = benchmark_models()[0]
    rows = [
        {"variant": "AR", "model": first, "seed": 0, "diverged": "training diverged at step 3"},
        {"variant": "AR", "model": first, "seed": 1, "steps_to_goal": 20, "acc0": 0.98, "acc": 0.97, "asr": 0.01,
         "min_asr": 0.0},
        {"variant": "AR", "model": first, "seed": 2, "steps_to_goal": 40, "acc0": 0.98, "acc": 0.96, "asr": 0.03,
         "min_asr": 0.01},
    ]  # fmt: skip
    row = next(line for line in regularizers.section(rows).splitlines() if line.startswith("| AR |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1/3"  # diverged
    assert cells[2] == "30 ± 10 (2/3)"  # mean ± half range over the two that got there
    assert cells[-4:] == ["30", "2.0 [3.0]", "1.50", "2.0"]  # mean steps, ASR mean [max], drop, rebound


def test_unseen_architecture_cases_name_registered_architectures_and_attacks():
    from bench.unseen_arch import CASES
    from defense import attacks, models

    for arch, kwargs, attack, params, target in CASES.values():
        assert models.count_parameters(arch, 10, (1, 28, 28), **kwargs) > 0
        assert attacks.make_trigger(attack, (1, 28, 28), seed=0, **params) is not None
        assert 0 <= target < 10
