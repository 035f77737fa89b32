"""The natgw.cli package: no import cycle, and nothing heavy imported to start a command."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import natgw.cli

CLI_DIR = Path(natgw.cli.__file__).parent
MODULES = sorted(f"natgw.cli.{p.stem}" if p.stem != "__init__" else "natgw.cli"
                 for p in CLI_DIR.glob("*.py"))
# What a read-only command must not pay for at startup (each costs tens to
# hundreds of milliseconds to import).
HEAVY = ("pydantic", "pyroute2", "prometheus_client", "bcc", "yaml")


def _imports(module: str) -> set[str]:
    """natgw.cli modules `module` imports, at top level or inside functions.

    A submodule's implicit import of its parent package is not an edge: the
    package is being imported already when its submodules are.
    """
    path = CLI_DIR / ("__init__.py" if module == "natgw.cli" else f"{module.rsplit('.', 1)[1]}.py")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from natgw.cli import gateway` names a submodule; `from natgw.cli
            # import app` too; `from natgw.cli import fail` would need the package.
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if n in MODULES else node.module for n in subs]
        else:
            continue
        out |= {n for n in names if n in MODULES}
    return out - {module}


def test_no_import_cycle_among_cli_modules() -> None:
    graph = {m: _imports(m) for m in MODULES}
    assert graph["natgw.cli.app"] >= {"natgw.cli.gateway", "natgw.cli.maps"}  # the graph is read
    # Depth-first search for a back edge.
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(m):], m]))
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, [*path, m])
        done.add(m)

    for m in MODULES:
        visit(m, [])
    # No command module reaches back to the package or the app that assembles them.
    for m in MODULES:
        if m not in ("natgw.cli", "natgw.cli.app"):
            assert not graph[m] & {"natgw.cli", "natgw.cli.app"}, m


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    code = (f"import sys, {module}; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.split() == [], f"importing {module} imported {proc.stdout.strip()}"


@pytest.mark.parametrize("args", [["version"], ["status"], ["maps", "--json"],
                                  ["lookup", "192.0.2.1"]])
def test_read_only_commands_run_without_heavy_imports(args: list[str]) -> None:
    code = ("import sys\nfrom natgw.cli import app\n"
            f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
            f"print('IMPORTED', *(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert "IMPORTED" in proc.stdout, proc.stderr
    assert proc.stdout.rsplit("IMPORTED", 1)[1].split() == []
