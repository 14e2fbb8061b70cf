"""AXL's state files as data: the real fixtures read to what their manifests say, AXL's own name split,
strict numbers, refusals of whatever is not one whole regular state file, and the search by magic."""

from __future__ import annotations

import os
import socket
import stat
import traceback
from pathlib import Path

import pytest
from axlfixtures import SCENARIOS, WITH_STATE, extract, original_state
from conftest import NOBODY, is_root
from hypothesis import given
from hypothesis import strategies as st

from axlstateless import axlstate, kvtree
from axlstateless.axlstate import (
    STATE_CANCELED,
    STATE_COMPLETED,
    STATE_DISPATCHED,
    STATUS_DEST,
    STATUS_ERROR,
    STATUS_INPROG,
    STATUS_SOURCE,
    XFER_PTHREAD,
    XFER_SYNC,
    find_state_files,
    parse_state,
    read_state_file,
    split_axl_name,
)
from axlstateless.errors import KVTreeError, NotAxlStateError, StateFileError, UsageError
from axlstateless.kvtree import KVTree, dumps, loads

# What the fixtures' README says AXL left (STATE, STATUS, TYPE), scenario by scenario.
RECORDED = {
    "a2": (STATE_DISPATCHED, STATUS_DEST, XFER_SYNC),
    "a3": (STATE_COMPLETED, STATUS_DEST, XFER_SYNC),
    "b1": (STATE_DISPATCHED, STATUS_SOURCE, XFER_SYNC),
    "c1": (STATE_DISPATCHED, STATUS_INPROG, XFER_PTHREAD),
    "c3": (STATE_CANCELED, STATUS_INPROG, XFER_SYNC),
    "d2": (STATE_COMPLETED, STATUS_DEST, XFER_SYNC),
    "e1": (STATE_DISPATCHED, STATUS_SOURCE, XFER_SYNC),
    "f1": (STATE_DISPATCHED, STATUS_DEST, XFER_SYNC),
    "g1": (STATE_COMPLETED, STATUS_ERROR, XFER_SYNC),
}


@pytest.mark.parametrize("sid", WITH_STATE)
def test_fixture_state_files_read_as_their_manifests_say(sid: str, tmp_path: Path) -> None:
    root, info, state_files = extract(sid, tmp_path)
    (path,) = state_files
    transfer = read_state_file(path)
    assert transfer.path == os.fsencode(path)
    assert (transfer.state, transfer.status, transfer.xfer_type) == RECORDED[sid]
    assert (transfer.state, transfer.status) == (info["state"]["STATE"], info["state"]["STATUS"])
    assert transfer.name == b"axl_cp" and transfer.handle is None
    assert transfer.use_extension is (sid != "e1")
    by_source = {f.source: f for f in transfer.files}
    assert len(by_source) == len(transfer.files)
    named = [e for e in info["files"] if "state" in e]
    assert len(named) == len(transfer.files) > 0
    broot = os.fsencode(root) + b"/"
    for e in named:
        f = by_source.pop(broot + bytes.fromhex(e["source"]["hex"]))
        assert f.dest == broot + bytes.fromhex(e["state"]["DEST"]["hex"])
        assert f.status == e["state"]["STATUS"]
        assert (f.size, f.uid, f.gid, f.atime_ns, f.mtime_ns) == (e["size"], 0, 0, e["atime_ns"], e["mtime_ns"])
        assert f.mode is not None and stat.S_ISREG(f.mode) and stat.S_IMODE(f.mode) == int(e["mode"], 8)
    assert not by_source


def test_scenarios_without_a_state_file_extract_without_one(tmp_path: Path) -> None:
    for sid in set(SCENARIOS) - set(WITH_STATE):
        root, info, state_files = extract(sid, tmp_path)
        assert state_files == [] and info["state_files"] == []
        assert list(find_state_files([root])) == []


def test_extract_relocates_to_any_directory_and_can_set_the_owner(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 150) / "y"
    root, _, (path,) = extract("f1", deep, owner=(1234, 5678))
    transfer = read_state_file(path)
    assert {(f.uid, f.gid) for f in transfer.files} == {(1234, 5678)}
    assert all(f.dest.startswith(os.fsencode(root) + b"/dst/") for f in transfer.files)
    temps = {split_axl_name(f.dest) for f in transfer.files}
    assert (os.fsencode(root) + b"/dst/x._AXL7", b"") in temps
    assert all(os.path.lexists(f.dest) for f in transfer.files)


@pytest.mark.parametrize("sid", WITH_STATE)
def test_every_cut_of_a_state_file_is_a_state_file_error(sid: str) -> None:
    data = original_state(sid)
    parse_state(b"whole", data)
    for n in range(len(data)):
        with pytest.raises(StateFileError) as info:
            parse_state(b"cut", data[:n])
        assert info.value.path == "cut"


def test_cuts_read_from_disk_name_the_file(tmp_path: Path) -> None:
    data = original_state("b1")
    path = tmp_path / "rank0.state"
    for n, reason in [(0, "empty state file"), (1, "shorter than"), (19, "shorter than"), (20, "truncated")]:
        path.write_bytes(data[:n])
        with pytest.raises(StateFileError, match=reason) as info:
            read_state_file(path)
        assert info.value.path == str(path)
    for n in (100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:n])
        with pytest.raises(StateFileError, match="truncated"):
            read_state_file(path)


# --- strict fields -----------------------------------------------------------------------------------


def _state(**entry: bytes | None) -> KVTree:
    """A small AXL state file with one FILE entry; keyword None drops that key."""
    fields = {
        "DEST": b"/d/a._AXL",
        "STATUS": b"3",
        "MODE": b"33188",
        "UID": b"0",
        "GID": b"0",
        "SIZE": b"4096",
        "ATIME_SECS": b"10",
        "ATIME_NSECS": b"1",
        "MTIME_SECS": b"20",
        "MTIME_NSECS": b"999999999",
    }
    fields.update(entry)  # type: ignore[arg-type]
    file_entry = {k.encode(): {v: {}} for k, v in fields.items() if v is not None}
    return {
        b"STATE": {b"2": {}},
        b"STATUS": {b"3": {}},
        b"TYPE": {b"2": {}},
        b"USE_EXTENSION": {b"1": {}},
        b"FILE": {b"/s/a": file_entry},
    }


def test_a_clean_entry_reads_whole() -> None:
    (f,) = parse_state(b"p", dumps(_state())).files
    assert f == axlstate.AxlFile(
        source=b"/s/a",
        dest=b"/d/a._AXL",
        status=3,
        mode=0o100644,
        uid=0,
        gid=0,
        size=4096,
        atime_ns=10_000_000_001,
        mtime_ns=20_999_999_999,
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0", 0),
        (b"4096", 4096),
        (b"010000", 4096),
        (b"0x1000", 4096),
        (b"0X1000", 4096),
        (b"18446744073709551615", 2**64 - 1),
    ],
)
def test_unsigned_numbers_read_as_strtoul_base_0(text: bytes, value: int) -> None:
    (f,) = parse_state(b"p", dumps(_state(SIZE=text))).files
    assert f.size == value


@given(
    st.integers(0, 2**64 - 1),
    st.sampled_from(["%d", "0%o", "0x%x", "0X%X"]),
    st.sampled_from(["SIZE", "MODE", "UID", "GID"]),
)
def test_any_unsigned_long_in_any_strtoul_form_reads_back(value: int, form: str, key: str) -> None:
    (f,) = parse_state(b"p", dumps(_state(**{key: (form % value).encode()}))).files
    assert getattr(f, key.lower()) == value


@pytest.mark.parametrize(
    "text",
    [b"", b" 4096", b"+4096", b"-1", b"4096 ", b"4096x", b"0x", b"09", b"1e3", b"18446744073709551616", b"\xd9\xa3"],
)
def test_a_number_that_is_not_clean_makes_the_file_an_error(text: bytes) -> None:
    with pytest.raises(StateFileError, match="SIZE"):
        parse_state(b"p", dumps(_state(SIZE=text)))


@pytest.mark.parametrize("text", [b"3 ", b"+3", b"0x3", b"2147483648", b"three"])
def test_an_int_that_is_not_clean_makes_the_file_an_error(text: bytes) -> None:
    with pytest.raises(StateFileError, match="STATUS"):
        parse_state(b"p", dumps(_state(STATUS=text)))


def test_absent_keys_are_none_and_all_zero_times_are_none() -> None:
    (f,) = parse_state(b"p", dumps(_state(SIZE=None, MODE=None, UID=None, STATUS=None))).files
    assert (f.size, f.mode, f.uid, f.gid, f.status) == (None, None, None, 0, None)
    zero = dict.fromkeys(("ATIME_SECS", "ATIME_NSECS", "MTIME_SECS", "MTIME_NSECS"), b"0")
    (f,) = parse_state(b"p", dumps(_state(**zero))).files
    assert (f.atime_ns, f.mtime_ns) == (None, None)
    (f,) = parse_state(b"p", dumps(_state(ATIME_SECS=None, ATIME_NSECS=None))).files
    assert (f.atime_ns, f.mtime_ns) == (None, 20_999_999_999)


@pytest.mark.parametrize(
    ("tree", "reason"),
    [
        (_state(DEST=None), "no DEST"),
        (_state(DEST=b""), "DEST is empty"),
        (_state(MTIME_NSECS=None), "not both recorded"),
        (_state(ATIME_NSECS=b"1000000000"), "not below one second"),
        ({k: v for k, v in _state().items() if k != b"TYPE"}, "not an AXL state file"),
        ({b"FILE": {}}, "not an AXL state file"),
    ],
)
def test_incomplete_records_make_the_file_an_error(tree: KVTree, reason: str) -> None:
    with pytest.raises(StateFileError, match=reason):
        parse_state(b"p", dumps(tree))


def test_two_values_or_a_value_with_keys_below_make_the_file_an_error() -> None:
    tree = _state()
    tree[b"FILE"][b"/s/a"][b"SIZE"] = {b"1": {}, b"2": {}}
    with pytest.raises(StateFileError, match="2 values"):
        parse_state(b"p", dumps(tree))
    tree[b"FILE"][b"/s/a"][b"SIZE"] = {b"1": {b"x": {}}}
    with pytest.raises(StateFileError, match="keys below"):
        parse_state(b"p", dumps(tree))


def test_bb_handle_and_extension_switch() -> None:
    tree = _state(DEST=b"/d/a._AXL42")
    tree[b"BB_TransferHandle"] = {b"42": {}}
    tree[b"USE_EXTENSION"] = {b"0": {}}
    transfer = parse_state(b"p", dumps(tree))
    assert (transfer.handle, transfer.use_extension) == (42, False)
    assert split_axl_name(transfer.files[0].dest) == (b"/d/a", b"42")


# --- what is opened ----------------------------------------------------------------------------------


def test_only_a_regular_file_is_read_and_never_through_a_symlink(tmp_path: Path) -> None:
    good = tmp_path / "good.state"
    good.write_bytes(dumps(_state()))
    assert read_state_file(good).files[0].size == 4096
    link = tmp_path / "link.state"
    link.symlink_to(good)
    with pytest.raises(StateFileError, match="symlink"):
        read_state_file(link)
    fifo = tmp_path / "fifo.state"
    os.mkfifo(fifo)
    with pytest.raises(StateFileError, match="not a regular file"):
        read_state_file(fifo)  # returns at once: opened without blocking
    with pytest.raises(StateFileError, match="not a regular file"):
        read_state_file(tmp_path)
    with pytest.raises(StateFileError, match="No such file"):
        read_state_file(tmp_path / "missing")
    big = tmp_path / "big.state"
    with open(big, "wb") as f:
        f.truncate(axlstate.MAX_STATE_FILE_SIZE + 1)
    with pytest.raises(StateFileError, match="larger than"):
        read_state_file(big)
    other = tmp_path / "other.kvtree"
    other.write_bytes(dumps({b"SOMETHING": {b"else": {}}}))
    with pytest.raises(NotAxlStateError, match="not an AXL state file"):
        read_state_file(other)


def test_read_relative_to_a_directory_descriptor(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(dumps(_state()))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        transfer = read_state_file(b"s", dir_fd=fd)
    finally:
        os.close(fd)
    assert transfer.path == b"s" and transfer.state == STATE_DISPATCHED


def test_find_state_files_by_magic_never_through_symlinks(tmp_path: Path) -> None:
    top = tmp_path / "states"
    (top / "rank" / "deep" / "er").mkdir(parents=True)
    (top / "empty").mkdir()
    state = dumps(_state())
    (top / "r0").write_bytes(state)  # no naming rule: recognised by content
    (top / "rank" / "deep" / "er" / "r1.state").write_bytes(state)
    (top / "rank" / "notes.state").write_bytes(b"not a kvtree, only some notes")
    (top / "rank" / "short").write_bytes(b"short")
    (top / "rank" / "cut").write_bytes(state[:30])  # the magic, then truncated: reading it says so
    (top / "rank" / "cut5").write_bytes(state[:5])  # the start of the magic: a state file cut short
    (top / "rank" / "empty").write_bytes(b"")  # could be anything: not found
    (top / "rank" / "scr.filemap").write_bytes(dumps({b"RANK": {b"0": {}}}))  # another program's kvtree
    (top / "link.state").symlink_to(top / "r0")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "r9").write_bytes(state)
    (top / "rank" / "linkdir").symlink_to(outside)
    os.mkfifo(top / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(top / "sock"))
        found = list(find_state_files([top]))
    b = os.fsencode(top)
    assert found == [
        b + b"/r0",
        b + b"/rank/cut",
        b + b"/rank/cut5",
        b + b"/rank/deep/er/r1.state",
        b + b"/rank/scr.filemap",
    ]
    with pytest.raises(NotAxlStateError, match="not an AXL state file"):
        read_state_file(top / "rank" / "scr.filemap")
    with pytest.raises(StateFileError, match="shorter than"):
        read_state_file(top / "rank" / "cut5")
    # A file named on its own is yielded as it is: reading it says what it is.
    named = [top / "rank" / "notes.state", top / "link.state", top / "rank" / "deep"]
    assert list(find_state_files(named)) == [
        b + b"/rank/notes.state",
        b + b"/link.state",
        b + b"/rank/deep/er/r1.state",
    ]
    with pytest.raises(StateFileError, match="bad magic"):
        read_state_file(top / "rank" / "notes.state")
    with pytest.raises(UsageError, match="no such"):
        list(find_state_files([tmp_path / "missing"]))


def test_find_state_files_reports_an_unreadable_directory_and_goes_on(request: pytest.FixtureRequest) -> None:
    # Mode 000 stops only an unprivileged user: as root, the search runs in a child that is `nobody`.
    base: Path = request.getfixturevalue("nobody_dir" if is_root else "tmp_path")

    def check() -> None:
        top = base / "states"
        (top / "a").mkdir(parents=True)
        (top / "b").mkdir()
        (top / "b" / "r0").write_bytes(dumps(_state()))
        (top / "a").chmod(0)
        errors: list[StateFileError] = []
        found = list(find_state_files([top], on_error=errors.append))
        assert found == [os.fsencode(top / "b" / "r0")]
        assert [(e.path, e.reason) for e in errors] == [(str(top / "a"), "Permission denied")]
        with pytest.raises(StateFileError, match="Permission denied"):
            list(find_state_files([top]))

    if not is_root:
        check()
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            check()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the search as nobody failed (its traceback is above)"


# --- AXL's name split ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split"),
    [
        (b"x._AXL7._AXL", (b"x._AXL7", b"")),
        (b"notes._AXL._AXL", (b"notes._AXL", b"")),
        (b"/p/ckpt/rank0/file.00._AXL", (b"/p/ckpt/rank0/file.00", b"")),
        (b"/p/ckpt/rank0/file.00._AXL1234", (b"/p/ckpt/rank0/file.00", b"1234")),
        (b"data._AXL.txt._AXL", (b"data._AXL.txt", b"")),
        (b"/p/sub dir/-dash._AXL3._AXL", (b"/p/sub dir/-dash._AXL3", b"")),
        # A directory holding the marker, a file that does not: AXL still splits there.
        (b"/p/run._AXL/file.dat", (b"/p/run", b"/file.dat")),
        (b"/p/run._AXL/file.dat._AXL", (b"/p/run._AXL/file.dat", b"")),
        (b"a._AXL", (b"a", b"")),
        (b"._AXLx", (b"", b"x")),  # AXL would rename to ""; a caller must refuse an empty final
        (b"._AXL", None),  # shorter than one byte plus the marker
        (b"plain.dat", None),
        (b"", None),
    ],
)
def test_split_axl_name_as_axl_does(name: bytes, split: tuple[bytes, bytes] | None) -> None:
    assert split_axl_name(name) == split


def axl_remove_extension(path: bytes) -> tuple[bytes, bytes] | None:
    """A line-by-line transcription of AXL's C (axl.c): scan backwards from strlen - 5 to 0."""
    ext = b"._AXL"
    if len(path) < 1 + len(ext):
        return None
    for i in range(len(path) - len(ext), -1, -1):
        if path[i : i + len(ext)] == ext:
            return path[:i], path[i + len(ext) :]
    return None


names = st.lists(st.sampled_from([b"._AXL", b"._AX", b"L", b"7", b"/", b".", b"_AXL", b"a"]), max_size=8).map(b"".join)


@given(names | st.binary(max_size=20))
def test_split_axl_name_matches_a_transcription_of_axl(name: bytes) -> None:
    assert split_axl_name(name) == axl_remove_extension(name)


@given(
    st.binary(min_size=1).map(lambda b: b.replace(b"\0", b"")),
    st.sampled_from([b"", b"0", b"7", b"18446744073709551615"]),
)
def test_split_inverts_axls_own_naming(final: bytes, handle: bytes) -> None:
    # axl.c names a temporary "%s%s%s" % (dest, "._AXL", extra): extra is empty or a BB handle's digits.
    if not final:
        return
    assert split_axl_name(final + b"._AXL" + handle) == (final, handle)


def test_kvtree_error_is_what_loads_raises() -> None:
    with pytest.raises(KVTreeError):
        loads(b"x" * 25)
    assert issubclass(KVTreeError, ValueError) and StateFileError.exit_code == 4
    assert kvtree.is_kvtree(dumps({}))
