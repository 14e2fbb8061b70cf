"""The public surface: exported names, help for every command, errors as one line."""

from __future__ import annotations

import subprocess
import sys

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
    return sorted(cli.commands)


@pytest.mark.parametrize("name", _commands())
def test_every_command_has_help(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    command = cli.commands[name]
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
