"""The public surface: exported names, help for every command, errors as one line."""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import run_cli

import axlstateless
from axlstateless.cli import cli


def test_all_is_sorted_and_complete() -> None:
    exported = axlstateless.__all__

    # isort style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions, each alphabetical.
    def key(name: str) -> tuple[int, str]:
        bare = name.lstrip("_")
        return (0 if bare.isupper() else 1 if bare[:1].isupper() else 2, name)

    assert exported == sorted(exported, key=key)
    public = {
        n for n in dir(axlstateless) if not n.startswith("_") and not isinstance(getattr(axlstateless, n), type(sys))
    }
    assert public <= set(exported) | {"annotations"}
    for name in exported:
        assert hasattr(axlstateless, name), name


def test_library_never_imports_click() -> None:
    code = "import sys, axlstateless; assert 'click' not in sys.modules, 'click imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _commands() -> list[str]:
    return sorted(cli.list_commands(click.Context(cli)))


@pytest.mark.parametrize("name", _commands())
def test_every_command_has_help(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    assert command.help and len(command.help) > 40
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{name} {param.opts} has no help"


@pytest.mark.parametrize("name", ["finalize", "status"])
def test_exit_codes_are_documented_in_help(name: str) -> None:
    out = CliRunner().invoke(cli, [name, "--help"]).stdout
    for code in range(5):
        assert f"  {code}  " in out


def test_python_dash_m_and_version() -> None:
    proc = run_cli("--version", check=0)
    assert axlstateless.__version__ in proc.stdout


def test_usage_error_exit_code() -> None:
    proc = run_cli("finalize", check=2)
    assert "Missing argument" in proc.stderr
    proc = run_cli("prestage", "--handle", "-1", "a", "b", check=2)
    assert "Traceback" not in proc.stderr


def _imports(path: Path, package: str) -> set[str]:
    """Every module of `package` that `path` imports, at module level or inside a function."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's own package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module and node.module.startswith("axlstateless"):
                found.add(node.module)
    return found


def test_no_import_cycles_in_the_simulator() -> None:
    """The simulator's modules import without a cycle, so the next reader can read them bottom-up (its
    spool and mover once imported each other)."""
    root = Path(axlstateless.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in (root / "bbsim").rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(path, package)
    # A package's __init__ re-exports its modules: an edge into a package is not one into its modules.
    modules = set(graph)

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = [*trail[trail.index(name) :], name]
            if not any(m == n.rpartition(".")[0] for m, n in itertools.pairwise(cycle)):
                pytest.fail("import cycle: " + " -> ".join(cycle))
            return
        for target in graph.get(name, ()):
            if target in modules:
                visit(target, [*trail, name])

    for name in sorted(graph):
        visit(name, [])


def test_every_exception_is_raised() -> None:
    """No dead API: every error class the library exports is raised somewhere in it."""
    root = Path(axlstateless.__file__).parent
    source = "\n".join(p.read_text() for p in root.rglob("*.py"))
    for name in axlstateless.__all__:
        obj = getattr(axlstateless, name)
        if isinstance(obj, type) and issubclass(obj, axlstateless.AxlError) and obj is not axlstateless.AxlError:
            assert re.search(rf"raise {name}\(", source), f"{name} is never raised"
