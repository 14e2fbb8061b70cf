"""Shared test helpers: real files in tmp_path, the installed CLI as a subprocess, real xattrs."""

from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "axlstateless"]


def _native_built() -> bool:
    # Looked for without importing the package: its loader reads AXLSTATELESS_PURE at import.
    spec = importlib.util.find_spec("axlstateless")
    places = spec.submodule_search_locations if spec is not None else None
    return any(
        (Path(place) / f"_fastcore{suffix}").exists()
        for place in places or []
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


# The suite runs once per path (.ci/run). A checkout where the native core was never built (a fresh
# worktree run from PYTHONPATH, without `pip install -e .` or `python setup.py build_ext --inplace`) runs
# the pure path on purpose, rather than print "could not be loaded" in every CLI test's stderr; .ci/run
# checks that the native core is loaded in CI.
NATIVE_BUILT = _native_built()
if not NATIVE_BUILT:
    os.environ.setdefault("AXLSTATELESS_PURE", "1")
needs_native_build = pytest.mark.skipif(not NATIVE_BUILT, reason="the native core is not built in this checkout")


def pytest_report_header() -> str:
    from axlstateless import fastpath

    return f"axlstateless finalize path: {fastpath.PATH}"


def run_cli(
    *args: str | os.PathLike[str], check: int | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run ``axl-stateless ARGS`` as a real subprocess; with `check`, assert its exit code."""
    proc = subprocess.run(
        [*CLI, *map(os.fspath, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if check is not None:
        assert proc.returncode == check, (
            f"exit {proc.returncode}, expected {check}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def copy_filelist(filelist: Path, *, truncate: Callable[[str], int | None] | None = None) -> None:
    """Play the data mover: copy each ``<source> <temporary> 0`` line of a bbcmd file list, as the BB
    does (O_TRUNC into the existing temporary); `truncate` may return a byte count to cut a copy short."""
    for line in filelist.read_bytes().splitlines():
        src, dst, _flags = line.split(b" ")
        data = Path(os.fsdecode(src)).read_bytes()
        cut = truncate(os.fsdecode(src)) if truncate else None
        with open(dst, "r+b") as out:
            out.truncate(0)
            out.write(data if cut is None else data[:cut])


def temporaries(root: Path) -> list[Path]:
    """Every temporary, directory marker or legacy temporary below `root` (not unrecognised names)."""
    from axlstateless.nameformat import Unrecognised, parse

    found = []
    for p in root.rglob("*"):
        parsed = parse(os.fsencode(p.name))
        if parsed is not None and not isinstance(parsed, Unrecognised):
            found.append(p)
    return sorted(found)


def xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.axl.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()
    return True


is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="needs root (to mount, chown or drop privileges)")


NOBODY = 65534


def run_cli_as(uid: int, gid: int, *args: str | os.PathLike[str]) -> tuple[int, str, str]:
    """Run the CLI in a forked child that has dropped to uid:gid for good (no way back to root).

    Forked rather than exec'd: this interpreter lives under /root (mode 0700), which the unprivileged
    user could not reach; everything the CLI needs is imported before the fork.
    """
    import tempfile
    import traceback

    # Imported before the fork: the child can no longer read modules under /root. The CLI's commands and
    # the library's public names are imported on first use: all of them now.
    import click._textwrap  # noqa: F401

    import axlstateless
    import axlstateless.axlsource
    from axlstateless.cli import cli

    for name in axlstateless.__all__:
        getattr(axlstateless, name)
    for name in cli.list_commands(click_context := __import__("click").Context(cli)):
        cli.get_command(click_context, name)

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - pytest replaced sys.stdout
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                try:
                    cli.main([os.fspath(a) for a in args], prog_name="axl-stateless", standalone_mode=True)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return (
            os.waitstatus_to_exitcode(status),
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A scratch directory owned by `nobody`, reachable by it (pytest's tmp_path is under a 0700 dir)."""
    import shutil
    import tempfile

    if not is_root:
        pytest.skip("needs root to act as another user")
    path = Path(tempfile.mkdtemp(prefix="axl-nobody-", dir="/tmp"))
    os.chmod(path, 0o755)
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
