"""Every benchmark module imports: a `make` target whose module no longer imports (a name
moved elsewhere) fails here, not in front of the user who runs it."""

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("module", sorted(p.stem for p in BENCH.glob("*.py")))
def test_the_benchmark_module_imports(module: str) -> None:
    importlib.import_module("bench" if module == "__init__" else f"bench.{module}")
