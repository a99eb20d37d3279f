"""The registries: every concept is one entry, and a new entry reaches the CLI and the benchmark alone."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from defense import attacks, baselines, bench, bundle, data, metrics, models, salience
from defense import cli as cli_module
from defense.data import TensorData
from defense.neurons import NeuronScores, neuron_map
from defense.paths import benchmark_models
from defense.purify import REGULARIZERS, Purification, PurifyConfig
from defense.registry import ARCHITECTURES, ATTACKS, DEFENSES, SCORES, Defense, Score

ROOT = Path(__file__).resolve().parent.parent
BADNETS = ROOT / "assets" / "models" / "mnist-badnets"


@pytest.fixture
def toy_score():
    """A score that exists only in this test: neuron index, high = suspect, data-free."""
    SCORES.register(
        Score(
            name="toy",
            label="neuron index",
            explanation="The neuron's position in its layer; a test entry.",
            low_is_suspect=False,
            compute=lambda model, clean, layers: NeuronScores(
                "toy", {n: torch.arange(nl.size, dtype=torch.float32) for n, nl in layers.items()}
            ),
            needs=frozenset(),
        )
    )
    yield "toy"
    SCORES.unregister("toy")


def test_a_registered_score_reaches_the_cli(toy_score, cli, tmp_path):
    out = tmp_path / "toy.csv"
    code, _, err = cli("salience", "--bundle", BADNETS, "--metric", "toy", "--out", out)
    assert code == 0, err
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"layer", "neuron", "toy"}
    assert [float(r["toy"]) for r in rows[:3]] == [0.0, 1.0, 2.0]
    code, _, err = cli("salience", "--bundle", BADNETS, "--metric", "all", "--out", out)
    assert code == 0, err
    with out.open() as f:
        assert list(csv.DictReader(f))[0].keys() >= {"benign", "clp", "toy"}
    args = cli_module.build_parser().parse_args(["purify", "--bundle", "x", "--metric", "toy"])
    assert args.metric == "toy"
    SCORES.unregister("toy")
    code, _, err = cli("salience", "--bundle", BADNETS, "--metric", "toy", "--out", out)
    assert code == 2 and "invalid choice: 'toy'" in err


def test_a_registered_score_reaches_the_benchmark(toy_score):
    b = bundle.load_bundle(BADNETS)
    splits = data.load_dataset("mnist5k")
    layers = neuron_map(b.model)
    truth = metrics.backdoor_ground_truth(
        b.model, layers, splits.test, metrics.triggered_set(splits.test, b.trigger, b.target), max_images=64
    )
    rows = bench.identification_rows(b.model, splits.clean, layers, truth["infected"])
    assert [r["metric"] for r in rows] == SCORES.names()
    assert rows[-1]["metric"] == "toy" and 0 <= rows[-1]["auc"] <= 1


def test_direction_and_compute_come_from_the_registry(toy_score):
    s = NeuronScores("toy", {"a": torch.tensor([0.0, 1.0, 2.0])})
    assert s.suspicion()["a"].tolist() == [0.0, 1.0, 2.0]  # high = suspect, as the entry says
    assert NeuronScores("magnitude", s.layers).suspicion()["a"].tolist() == [-0.0, -1.0, -2.0]
    with pytest.raises(ValueError, match="unknown score 'nope': expected one of benign, magnitude"):
        salience.compute("nope", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs the defender's clean images"):
        salience.compute("benign", models.build("small_cnn", 10, (1, 28, 28), [0.5], [0.5]))


def test_every_entry_is_described():
    for registry in (SCORES, DEFENSES, ATTACKS, ARCHITECTURES):
        assert len(registry) > 0
        for entry in registry:
            assert entry.label and len(entry.explanation) > 40, entry.name


def test_defense_entries_agree_with_the_rest():
    assert [d.name for d in DEFENSES if d.recommended] == ["nc-ar"]
    assert baselines.recommended().name == "nc-ar"
    # the paper's method as published and our variant are two entries; each fine-tuning baseline has its pair
    assert [d.name for d in DEFENSES if d.paper] == ["bs-ar"] and not DEFENSES["bs-ar"].distill
    assert DEFENSES["bs-ar"].marking == ("benign", "ar")
    for plain in ("bs-ar", "mag-ar", "ft", "fp"):
        assert not DEFENSES[plain].distill and DEFENSES[plain + "-kd"].distill, plain
    for d in DEFENSES:
        if d.marking is not None:
            score, reg = d.marking
            assert score in SCORES and reg in REGULARIZERS, d.name
    # a defense's own defaults are settings PurifyConfig has, and they replace only values left at its defaults
    defaults = PurifyConfig()
    for d in DEFENSES:
        assert set(d.defaults) <= set(vars(defaults)), d.name
    own = baselines.settings_for("nc-ar", defaults)
    assert (own.ratio, own.batch_size, own.reversed_count, own.lr, own.steps) == (
        0.1,
        200,
        3,
        defaults.lr,
        defaults.steps,
    )
    assert baselines.settings_for("nc-ar", replace(defaults, ratio=0.3)).ratio == 0.3
    assert baselines.settings_for("clp-ar", defaults) == defaults
    # the distill flag says whether the run it builds distills
    tiny = models.build("small_cnn", 10, (1, 8, 8), [0.5], [0.5], width=2, hidden=4)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    clean = TensorData(x, y)
    for d in DEFENSES:
        run = baselines.make(d.name, tiny, clean, clean, clean, PurifyConfig(steps=1))
        assert isinstance(run, Purification)
        distills = run.teacher is not None and run.config.steps > 0
        assert distills == d.distill, d.name


def test_make_refuses_unknown_names_and_masks_for_non_marking_defenses():
    with pytest.raises(ValueError, match="unknown defense 'nope': expected one of clp-ar, bs-ar"):
        baselines.make("nope", None, None, None, None)
    with pytest.raises(ValueError, match="marks no neurons"):
        baselines.make("ft", None, None, None, None, mask={})


def test_attack_entries_dispatch_both_ways():
    for a in ATTACKS:
        if a.name == "file":
            continue
        trigger = attacks.make_trigger(a.name, (1, 28, 28))
        again = attacks.trigger_from_meta({"kind": a.name, "params": trigger.params()}, trigger.tensors(), (1, 28, 28))
        x = torch.rand(2, 1, 28, 28)
        assert torch.equal(trigger.apply(x), again.apply(x)), a.name
        assert set(trigger.params()) - {"seed"} <= set(a.params), a.name


def test_architecture_entries_count_parameters_without_building():
    for arch, shape in (("small_cnn", (1, 28, 28)), ("resnet18", (3, 32, 32))):
        entry = ARCHITECTURES[arch]
        real = sum(p.numel() for p in entry.build(num_classes=10, input_shape=shape).parameters())
        assert entry.param_count(10, shape) == real == models.count_parameters(arch, 10, shape)
    assert ARCHITECTURES["small_cnn"].kwargs == ("width", "hidden")
    assert models.count_parameters("small_cnn", 10, (1, 28, 28), width=4) < models.count_parameters(
        "small_cnn", 10, (1, 28, 28)
    )
    with pytest.raises(KeyError, match="unknown architecture 'vgg99'"):
        models.build("vgg99", 10, (1, 28, 28), [0.5], [0.5])


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that a file imports, at any depth of the file (lazy imports count too, type-only not)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {  # imports under `if TYPE_CHECKING:` never run
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith(package + "."):
                found.add(name)
    return found


def test_no_import_cycles_in_the_library():
    files = {}
    for path in sorted((ROOT / "defense").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        files[module] = path
    graph = {m: {t for t in _imports(p, "defense") if t in files and t != m} for m, p in files.items()}
    # a package's own __init__ importing its submodules (defense.scores) is not a cycle back into them
    for m in graph:
        graph[m] -= {p for p in graph[m] if m.startswith(p + ".")}
    assert graph["defense.metrics"] >= {"defense.neurons"}  # the graph is really read
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(t) :], t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", ["metrics", "masking", "purify"])
def test_each_module_imports_alone(module):
    code = f"import defense.{module} as m; from defense.registry import SCORES; print(len(SCORES))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 4


def test_readme_tables_are_the_registries(cli):
    text = (ROOT / "README.md").read_text()
    block = text.split(cli_module.TABLES_START, 1)[1].split("<!-- /registry -->", 1)[0]
    code, out, _ = cli("list")
    assert code == 0
    assert block.strip() == out.strip(), "README's tables are stale: run python -m defense list --update README.md"
    for entry in [*SCORES, *DEFENSES, *ATTACKS, *ARCHITECTURES]:
        assert f"`{entry.name}`" in out


def test_purify_runs_any_registered_defense(cli, tmp_path):
    code, out, err = cli("purify", "--bundle", BADNETS, "--defense", "clp", "--json", "--out", tmp_path / "p.zip")
    assert code == 0, err
    report = json.loads(out)
    assert report["defense"] == "clp" and report["steps"] == 0
    assert (report["config"]["metric"], report["config"]["reg"]) == ("clp", "prune")
    assert bundle.load_bundle(tmp_path / "p.zip").meta["purification"]["defense"] == "clp"
    code, _, err = cli("purify", "--bundle", BADNETS, "--defense", "clp", "--reg", "l1")
    assert code == 2 and "leave out --metric and --reg" in err


def test_a_registered_defense_reaches_the_cli_choices():
    entry = DEFENSES["ft"]
    DEFENSES.register(Defense("toy-ft", "toy", "A test entry: plain fine-tuning under another name.", entry.build))
    try:
        parser = cli_module.build_parser()
        assert parser.parse_args(["bench", "--defenses", "toy-ft"]).defenses == ["toy-ft"]
        assert parser.parse_args(["purify", "--bundle", "x", "--defense", "toy-ft"]).defense == "toy-ft"
    finally:
        DEFENSES.unregister("toy-ft")
    with pytest.raises(SystemExit):
        cli_module.build_parser().parse_args(["bench", "--defenses", "toy-ft"])


def test_a_partial_benchmark_run_keeps_the_other_rows_and_replaces_its_own(tmp_path):
    path = tmp_path / bench.RUNS_CSV
    first, second = benchmark_models()[:2]
    key = ["model", "defense", "seed"]

    def rows(defense, value, models=(first, second)):
        runs = [{"model": m, "defense": defense, "seed": s, "asr_after": value} for m in models for s in (0, 1)]
        return pd.DataFrame(runs)

    bench.merge_with_kept(pd.concat([rows("nc-ar", 0.5), rows("bs-ar", 0.7)]), path, key)
    merged = bench.merge_with_kept(rows("nc-ar", 0.1, models=(first,)), path, key)  # nc-ar re-run on one model
    got = {(r.model, r.defense, r.seed): r.asr_after for r in merged.itertuples()}
    assert len(got) == len(merged) == 8  # nothing doubled
    assert got[(first, "nc-ar", 0)] == got[(first, "nc-ar", 1)] == 0.1  # replaced
    assert got[(second, "nc-ar", 0)] == 0.5 and got[(first, "bs-ar", 1)] == 0.7  # kept
    # the registries' order, not the order of measurement: nc-ar is registered after bs-ar
    registered = sorted(["nc-ar", "bs-ar"], key=DEFENSES.names().index)
    assert list(dict.fromkeys(merged[merged.model == first].defense)) == registered
    assert list(pd.read_csv(path).asr_after) == list(merged.asr_after)  # saved for the next partial run
