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
