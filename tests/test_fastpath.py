"""The native accelerator against the pure-Python engine: its name parser agrees with `nameformat.parse`
on every input, a finalize gives the same records and leaves the same files on both paths, the native
path is really taken when it is available, and a missing extension falls back with one line on stderr.

The whole suite also runs once on each path (.ci/run: as installed, then with AXLSTATELESS_PURE=1).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import CLI, NATIVE_BUILT, NOBODY, is_root, needs_native_build, xattrs_supported
from hypothesis import example, given
from hypothesis import strategies as st
from test_fuzz_names import fuzz, names, temp_names

import axlstateless.walk as walk_mod
from axlstateless import (
    DirMarker,
    FinalizeOptions,
    LegacyName,
    NameFormatError,
    Outcome,
    Record,
    Reporter,
    TempName,
    Unrecognised,
    fastpath,
    finalize,
    parse,
)
from axlstateless.metadata import META_ATTR

core: ModuleType | None = importlib.import_module("axlstateless._fastcore") if NATIVE_BUILT else None

KINDS = {type(None): 0, Unrecognised: 1, TempName: 2, DirMarker: 3, LegacyName: 4}


# --- the name parser: C and Python agree on every input --------------------------------------------------


def check_agree(name: bytes) -> None:
    """What the C parser makes of `name` is what `nameformat.parse` makes of it (shared with
    tools/fuzz/atheris_native.py)."""
    assert core is not None
    parsed = parse(name)
    assert core.classify(name) == KINDS[type(parsed)], (name, parsed)
    fields = core.parse_file(name)
    if isinstance(parsed, TempName):
        assert fields == (parsed.final, parsed.mode, parsed.size, parsed.mtime_ns, parsed.handle)
    else:
        assert fields is None, (name, parsed, fields)


# Numbers at every edge of the grammar and of the ranges (2^63, 2^64, 20 digits, -0, leading zeros).
EDGES = [b"0", b"-0", b"00", b"01", b"-01", b"-", b"9223372036854775807", b"9223372036854775808"]
EDGES += [b"-9223372036854775808", b"-9223372036854775809", b"18446744073709551615", b"18446744073709551616"]
EDGES += [b"99999999999999999999", b"100000000000000000000", b"007"]
numbers = st.one_of(st.sampled_from(EDGES), st.integers(-(2**66), 2**66).map(lambda n: b"%d" % n))
modes = st.sampled_from([b"0644", b"7777", b"4755", b"0800", b"644", b"06440", b"0000"])
finals = st.one_of(
    st.binary(max_size=8),
    st.sampled_from([b"", b".", b"..", b"a/b", b"a\0", b"x._AXL", b"x._AXL7", b"y._AXL.v1.m0644.s1.t1"]),
)
suffixes = st.one_of(
    st.builds(
        lambda m, s, t, h: b"._AXL.v1.m" + m + b".s" + s + b".t" + t + (b"" if h is None else b".h" + h),
        modes,
        numbers,
        numbers,
        st.none() | numbers,
    ),
    st.builds(lambda m, t: b"._AXL.v1.dir.m" + m + b".t" + t, modes, numbers),
    st.builds(lambda d: b"._AXL" + d, st.just(b"") | numbers),
)
structured = st.builds(lambda pad, f, s: b"x" * pad + f + s, st.sampled_from([0, 0, 0, 180, 240]), finals, suffixes)


def _encoded(tn: TempName) -> bytes:
    try:
        return tn.encode()
    except NameFormatError:
        return b"x._AXL"


mutated = st.builds(
    lambda name, at, byte, drop: name[:at] + byte + name[at + drop :],
    temp_names.map(_encoded),
    st.integers(0, 120),
    st.binary(max_size=1),
    st.integers(0, 1),
)


@needs_native_build
@fuzz
@given(st.one_of(names, structured, mutated, temp_names.map(_encoded)))
@example(b"f._AXL.v1.m0644.s9223372036854775807.t-9223372036854775808.h18446744073709551615")
@example(b"f._AXL.v1.m0644.s9223372036854775808.t0")
@example(b"f._AXL.v1.m0644.s1.t-9223372036854775809")
@example(b"f._AXL.v1.m0644.s1.t1.h18446744073709551616")
@example(b"f._AXL018446744073709551615")
@example(b"a" + b"._AXL" * 50)
@example(b"x._AXL7._AXL")
@example(b"/._AXL")
@example(b"x._AXL.v1.m0644.s1.t1._AXL99")
@example(b"x" * 250 + b"._AXL.v1.m0644.s1.t1")
def test_native_parser_agrees_with_python(name: bytes) -> None:
    check_agree(name)


# --- the same outcomes on both paths ---------------------------------------------------------------------

MTIME = 1_600_000_000_987_654_321


def _temp(d: Path, final: bytes, data: bytes, *, mode: int = 0o644, size: int | None = None, **kw: Any) -> Path:
    name = TempName(final, mode, len(data) if size is None else size, kw.get("mtime", MTIME), kw.get("handle"))
    path = Path(os.fsdecode(os.fsencode(d) + b"/" + name.encode()))
    path.write_bytes(data)
    if (meta := kw.get("meta")) is not None:
        os.setxattr(path, META_ATTR, meta)
    return path


def build_varied(root: Path, *, xattrs: bool) -> None:
    """One of each case the native core must either settle as the engine would or give back to it."""
    uid, gid = os.geteuid(), os.getegid()
    good = b"atime=1500000000000000001;uid=%d;gid=%d" % (uid, gid)
    d = root / "d"
    d.mkdir(parents=True)
    for i in range(12):
        _temp(d, b"ok.%d" % i, b"x" * i, meta=good if xattrs and i % 2 else None)
    _temp(d, b"short", b"abc", size=10)
    _temp(d, b"long", b"abcdef", size=2)
    _temp(d, b"ro", b"r", mode=0o444)
    _temp(d, b"none", b"n", mode=0o000)
    _temp(d, b"suid", b"s", mode=0o4755)
    _temp(d, b"sgid", b"g", mode=0o2750)
    _temp(d, b"handle", b"h", handle=77)
    _temp(d, b"past", b"p", mtime=-1_000_000_001)
    _temp(d, b"empty", b"")
    _temp(d, b"\xffbytes", b"b")
    if xattrs:
        _temp(d, b"loose", b"l", meta=b"atime=5")  # not the canonical form: the engine's fallback reads it
        _temp(d, b"negatime", b"n", meta=b"atime=-1000000001;uid=%d;gid=%d" % (uid, gid))
        _temp(d, b"zeros", b"z", meta=b"atime=-0;uid=%d;gid=%d" % (uid, gid))
        _temp(d, b"foreign", b"f", meta=b"atime=1;uid=%d;gid=%d" % (uid + 1, gid))
        _temp(d, b"othergroup", b"o", meta=b"atime=1;uid=%d;gid=%d" % (uid, gid + 1))
        _temp(d, b"hugeatime", b"h", meta=b"atime=99999999999999999999;uid=%d;gid=%d" % (uid, gid))
    linked = _temp(d, b"linked", b"l")
    os.link(linked, d / "elsewhere")
    (d / "target").write_bytes(b"t")
    os.symlink("target", d / TempName(b"symlink", 0o644, 1, MTIME).encode().decode())
    os.mkfifo(d / TempName(b"fifo", 0o644, 0, MTIME).encode().decode())
    (d / "isdir").mkdir()
    _temp(d, b"isdir", b"d")
    (d / "replaced").write_bytes(b"old")
    _temp(d, b"replaced", b"new")
    _temp(d, b"twice", b"1", mtime=1)
    _temp(d, b"twice", b"2", mtime=2)
    (d / "ckpt._AXL123").write_bytes(b"legacy")
    (d / "bad._AXL.v1.m644.s1.t1").write_bytes(b"u")
    sub = d / "sub"
    sub.mkdir()
    _temp(sub, b"inner", b"i")
    (d / DirMarker(b"sub", 0o755, MTIME).encode().decode()).write_bytes(b"")
    if is_root:
        theirs = _temp(d, b"theirs", b"t")
        os.chown(theirs, NOBODY, NOBODY)
    # The same times in both trees, where the commit keeps what the file had (no atime in the xattr).
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if stat.S_ISREG(os.lstat(path := os.path.join(dirpath, name)).st_mode):
                os.utime(path, ns=(1_000_000_000_000_000_001, 1_100_000_000_000_000_001))


def state(root: Path) -> dict[str, tuple[int, ...]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st_ = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (
                st_.st_mode,
                st_.st_size,
                st_.st_mtime_ns if stat.S_ISREG(st_.st_mode) else 0,
                st_.st_atime_ns if stat.S_ISREG(st_.st_mode) else 0,
                st_.st_uid,
                st_.st_gid,
                st_.st_nlink,
            )
    return out


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The native core switched on for this test, whatever AXLSTATELESS_PURE says."""
    if core is None:
        pytest.skip("the native core is not built in this checkout")
    monkeypatch.setattr(fastpath, "_core", core)
    return core


def run_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: ModuleType, **opts: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Finalize two identical trees, natively and in pure Python; assert they end the same; return the
    records of each (as JSON, with the tree's own prefix removed), sorted."""
    xattrs = xattrs_supported(tmp_path)
    results = []
    for which in ("native", "pure"):
        root = tmp_path / which
        build_varied(root, xattrs=xattrs)
        monkeypatch.setattr(fastpath, "_core", native if which == "native" else None)
        monkeypatch.setattr(fastpath, "_FORCED", True)
        before = native.counters()["settled"]
        records: list[Record] = []
        finalize([root], records.append, FinalizeOptions(**opts))
        settled = native.counters()["settled"] - before
        assert (settled > 0) == (which == "native" and not opts.get("dry_run")), settled
        rows = [r.to_json() for r in records]
        for row in rows:
            for key in ("path", "final"):
                if row[key]:
                    row[key] = os.path.relpath(row[key], root)
        results.append((sorted(rows, key=lambda r: (r["path"], r["outcome"])), state(root)))
    (native_rows, native_state), (pure_rows, pure_state) = results
    assert native_rows == pure_rows
    assert native_state == pure_state
    return native_rows, pure_rows


@pytest.mark.parametrize("jobs", [1, 2])
def test_same_records_and_files_on_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: ModuleType, jobs: int
) -> None:
    rows, _ = run_both(tmp_path, monkeypatch, native, jobs=jobs)
    outcomes = {r["path"]: r["outcome"] for r in rows}
    # The cases above really cover each outcome, on both paths.
    assert outcomes["d/ok.3._AXL.v1.m0644.s3.t1600000000987654321"] == "committed"
    assert outcomes["d/short._AXL.v1.m0644.s10.t1600000000987654321"] == "aborted"
    assert outcomes["d/linked._AXL.v1.m0644.s1.t1600000000987654321"] == "left"
    assert outcomes["d/ckpt._AXL123"] != "committed" and (tmp_path / "native/d/ckpt._AXL123").exists()


def test_same_records_in_a_streamed_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: ModuleType
) -> None:
    monkeypatch.setattr(walk_mod, "CHUNK", 4)
    run_both(tmp_path, monkeypatch, native, jobs=2)


def test_same_records_with_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: ModuleType) -> None:
    run_both(tmp_path, monkeypatch, native, fsync=True)


def test_native_path_is_taken_when_available(tmp_path: Path) -> None:
    """In-process, as loaded: the native core settles the common case unless AXLSTATELESS_PURE=1."""
    forced = os.environ.get(fastpath.PURE_ENV, "") not in ("", "0")
    assert fastpath.NATIVE is (NATIVE_BUILT and not forced)
    d = tmp_path / "d"
    d.mkdir()
    for i in range(20):
        _temp(d, b"f.%d" % i, b"x" * i)
    before = fastpath.counters().get("settled", 0)
    records: list[Record] = []
    finalize([d], records.append)
    assert [r.outcome for r in records] == [Outcome.COMMITTED] * 20
    assert fastpath.counters().get("settled", 0) - before == (20 if fastpath.NATIVE else 0)


def test_committed_temporaries_are_counted_without_records(tmp_path: Path) -> None:
    """With no --json, --report or -v the reporter counts what the native core committed; the summary is
    the same on both paths."""
    d = tmp_path / "d"
    d.mkdir()
    for i in range(30):
        _temp(d, b"f.%d" % i, b"x" * i, size=i + (i == 7))
    text: list[str] = []

    class Lines:
        def write(self, s: str) -> None:
            text.append(s)

        def flush(self) -> None:
            pass

    reporter = Reporter("finalize", text_stream=Lines(), wants_records=False)  # type: ignore[arg-type]
    reporter.text_format = Record.to_text
    finalize([d], reporter)
    summary = reporter.finish()
    assert (summary.counts[Outcome.COMMITTED], summary.counts[Outcome.ABORTED], summary.exit_code) == (29, 1, 1)
    assert sum("aborted" in line for line in text) == 2  # the aborted record, and the summary line


def test_version_says_which_path(tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=True)
    assert fastpath.PATH in proc.stdout


def test_missing_extension_falls_back_and_says_so_once(tmp_path: Path) -> None:
    """A copy of the package whose extension cannot be loaded (a broken build: not a shared object):
    finalize commits everything in pure Python and says once on stderr that the native core could not be
    loaded; AXLSTATELESS_PURE=1 silences it. (A broken file rather than none: an editable install of
    another checkout would otherwise lend its own build to the copy.)"""
    import axlstateless

    pkg = tmp_path / "pkg"
    shutil.copytree(Path(axlstateless.__file__).parent, pkg / "axlstateless", ignore=shutil.ignore_patterns("*.so"))
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (pkg / "axlstateless" / f"_fastcore{suffix}").write_bytes(b"not a shared object\n")
    env = {k: v for k, v in os.environ.items() if k != fastpath.PURE_ENV} | {"PYTHONPATH": str(pkg)}
    for forced in (False, True):
        d = tmp_path / f"d{forced}"
        d.mkdir()
        for i in range(3):
            _temp(d, b"f.%d" % i, b"x")
        run_env = env | ({fastpath.PURE_ENV: "1"} if forced else {})
        proc = subprocess.run(
            [*CLI, "finalize", d], capture_output=True, text=True, env=run_env, cwd=tmp_path, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert sorted(os.listdir(d)) == ["f.0", "f.1", "f.2"]
        said = [line for line in proc.stderr.splitlines() if "native core could not be loaded" in line]
        assert len(said) == (0 if forced else 1), proc.stderr
        version = subprocess.run(
            [*CLI, "--version"], capture_output=True, text=True, env=run_env, cwd=tmp_path, check=True
        )
        assert "pure Python" in version.stdout


@needs_native_build
def test_extension_built_with_the_package() -> None:
    assert core is not None
    assert callable(core.settle)
    assert sys.modules["axlstateless._fastcore"] is core
