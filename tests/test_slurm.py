"""tools/slurm against a real Slurm: munged, slurmctld and slurmd on localhost with burst_buffer/lua
running tools/slurm/burst_buffer.lua; jobs submitted as an unprivileged user name their roots with
``#BB_LUA axl_finalize``, and stage-out finalizes them as that user. Plus the Lua files' syntax and the
directive parser, checked by a stock Lua interpreter."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import slurmkit
from conftest import copy_filelist, temporaries

LUA_FILES = [slurmkit.TOOLS / "axl_stateless.lua", slurmkit.TOOLS / "burst_buffer.lua"]
LUAC = next((shutil.which(c) for c in ("luac5.1", "luac5.4", "luac5.3", "luac") if shutil.which(c)), None)
LUA = next((shutil.which(c) for c in ("lua5.1", "lua5.4", "lua5.3", "lua") if shutil.which(c)), None)
NOBODY = 65534


@pytest.mark.skipif(LUAC is None, reason="no luac (Debian: lua5.1)")
@pytest.mark.parametrize("path", LUA_FILES, ids=lambda p: p.name)
def test_lua_syntax(path: Path) -> None:
    assert LUAC is not None
    proc = subprocess.run([LUAC, "-p", str(path)], capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(LUA is None, reason="no lua interpreter (Debian: lua5.1)")
def test_directive_parsing_matches_the_shell(tmp_path: Path) -> None:
    """The roots the module reads back from directives written with shell quoting are the roots meant;
    a malformed directive or a relative root is an error; scanning stops at the script's first command."""
    roots = ["/p/plain", "/p/with space", "/p/it's", '/p/"dq"', "/p/$HOME;rm -rf", "/p/back\\slash"]
    script = "#!/bin/sh\n#SBATCH -n 1\n"
    script += f"#BB_LUA axl_finalize {' '.join(map(shlex.quote, roots[:3]))}\n\n"
    script += f"#BB_LUA axl_finalize {' '.join(map(shlex.quote, roots[3:]))}\n#BB_LUA other /x\n"
    script += "true\n#BB_LUA axl_finalize /after/the/first/command\n"
    cases = {
        "good": script,
        "relative": "#BB_LUA axl_finalize /a rel/b\n",
        "empty": "#BB_LUA axl_finalize\n",
        "open": "#BB_LUA axl_finalize '/a\n",
        "none": "#!/bin/sh\n#BB_LUA axl_finalizer /a\n#BB_LUA\ttheirs axl_finalize\n",
    }
    driver = tmp_path / "driver.lua"
    driver.write_text(
        "local M = dofile(arg[1])\n"
        "local f = io.open(arg[2]); local roots, err = M.roots(f:read('*a')); f:close()\n"
        "if not roots then print('ERR ' .. err) else for _, r in ipairs(roots) do print(r) end end\n"
    )
    got = {}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        proc = subprocess.run(
            [str(LUA), str(driver), str(LUA_FILES[0]), str(tmp_path / name)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        got[name] = proc.stdout.splitlines()
    assert got["good"] == roots
    assert got["relative"] == ["ERR axl_finalize: rel/b: not an absolute path"]
    assert got["empty"] == ["ERR axl_finalize directive names no root"]
    assert got["open"] == ["ERR axl_finalize directive: unterminated ' quote"]
    assert got["none"] == []


# --- against the daemons -------------------------------------------------------------------------------

WHY_NOT = slurmkit.missing()


@pytest.fixture(scope="module")
def cluster() -> Iterator[slurmkit.Cluster]:
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    started = time.monotonic()
    c = slurmkit.start_cluster()
    print(
        f"cluster up in {time.monotonic() - started:.1f}s (venv {c.timings['venv']:.1f}s, daemons "
        f"{c.timings['daemons']:.2f}s) at {c.base}"
    )
    try:
        yield c
    finally:
        stopping = time.monotonic()
        c.stop()
        print(f"cluster stopped in {time.monotonic() - stopping:.2f}s")
        shutil.rmtree(c.base, ignore_errors=True)


def stage(c: slurmkit.Cluster, name: str, files: Mapping[str, int | None]) -> Path:
    """A root of temporaries for `files` (relative path: bytes the copy writes, None: all of them),
    pre-staged by the job's user with axl-stateless, then filled as root as a burst buffer would."""
    top = c.base / "data" / name
    src = top / "src"
    for i, rel in enumerate(files):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(os.urandom(1000 + 97 * i))
        (src / rel).chmod(0o640 if i % 2 else 0o444)
    shutil.chown(top, NOBODY, NOBODY)
    for p in top.rglob("*"):
        os.lchown(p, NOBODY, NOBODY)
    root = top / "root"
    filelist = top / "files.txt"
    proc = subprocess.run(
        [
            "runuser",
            "-u",
            slurmkit.JOB_USER,
            "--",
            str(c.command),
            "prestage",
            "-r",
            "--filelist",
            str(filelist),
            str(src),
            str(root),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    by_source = {str(src / rel): cut for rel, cut in files.items()}
    copy_filelist(filelist, truncate=lambda s: by_source[s])
    return root


def run_job(c: slurmkit.Cluster, directives: list[str]) -> dict[str, str]:
    script = "#!/bin/sh\n#SBATCH --job-name=axltest\n" + "".join(f"#BB_LUA {d}\n" for d in directives) + "true\n"
    proc = c.submit(script)
    assert proc.returncode == 0, proc.stderr
    return c.settle(proc.stdout.decode().strip())


def finalize_directive(*roots: Path | str) -> str:
    return "axl_finalize " + " ".join(shlex.quote(str(r)) for r in roots)


def report_of(root: Path, jobid: str) -> list[dict[str, Any]]:
    report = root / f"axl-finalize.{jobid}.jsonl"
    # Written by finalize itself: proof that it ran as the job's user, not as root.
    assert report.stat().st_uid == NOBODY
    return [json.loads(line) for line in report.read_text().splitlines()]


def says(job: dict[str, str], text: str) -> bool:
    """Whether the job's Reason holds `text`, in which Slurm writes spaces as '_'."""
    if text.replace(" ", "_") in job["Reason"]:
        return True
    raise AssertionError(f"{text!r} not in Reason={job['Reason']}")


def hurry(c: slurmkit.Cluster, jobid: str) -> dict[str, str]:
    """scancel --hurry: the way out of a failed stage-out; teardown then runs with hurry."""
    assert c.run(["scancel", "--hurry", jobid]).returncode == 0
    deadline = time.monotonic() + 20
    while (job := c.job(jobid)).get("JobState") == "STAGE_OUT" and time.monotonic() < deadline:
        time.sleep(0.1)
    return job


def test_whole_copy_is_committed(cluster: slurmkit.Cluster) -> None:
    files = {"ckpt/data.0": None, "ckpt/data.1": None, "ckpt/deep/data.2": None}
    root = stage(cluster, "whole", files)
    job = run_job(cluster, [finalize_directive(root)])
    assert job["JobState"] == "COMPLETED", job
    assert job["Reason"] == "None", job
    assert temporaries(root) == []
    src = root.parent / "src"
    for i, rel in enumerate(files):
        final = root / rel
        assert final.read_bytes() == (src / rel).read_bytes()
        assert (final.stat().st_mode & 0o7777, final.stat().st_uid) == (0o640 if i % 2 else 0o444, NOBODY)
    *records, summary = report_of(root, job["JobId"])
    assert sorted(r["final"] for r in records if r["kind"] == "file") == sorted(str(root / rel) for rel in files)
    assert {r["outcome"] for r in records} == {"committed"}
    assert summary["exit_code"] == 0


def test_partial_copy_is_error_in_reason(cluster: slurmkit.Cluster) -> None:
    root = stage(cluster, "partial", {"a": None, "b": 10, "c": None})
    job = run_job(cluster, [finalize_directive(root)])
    assert job["JobState"] == "STAGE_OUT", job
    assert says(job, "axl_finalize: finalize exited 1 (some data did not arrive, temporaries aborted): finalize: ")
    assert says(job, "committed, 1 aborted in")
    assert temporaries(root) == []
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith("axl-finalize")) == ["a", "c"]
    records = report_of(root, job["JobId"])
    files = {r["final"].rsplit("/", 1)[-1]: r["outcome"] for r in records[:-1] if r["kind"] == "file"}
    assert files == {"a": "committed", "b": "aborted", "c": "committed"}
    hurry(cluster, job["JobId"])


def test_no_directive_leaves_everything(cluster: slurmkit.Cluster) -> None:
    root = stage(cluster, "untouched", {"a": None, "b": None})
    before = sorted(p.name for p in root.iterdir())
    job = run_job(cluster, [f"site_stage_out {root}"])  # another BB_LUA directive, none of ours
    assert job["JobState"] == "COMPLETED", job
    assert sorted(p.name for p in root.iterdir()) == before
    assert len(temporaries(root)) == 2


def test_two_roots_on_two_lines(cluster: slurmkit.Cluster) -> None:
    first = stage(cluster, "two", {"x/a": None})
    first = first.rename(first.parent / "root with 'quotes' and $HOME")
    second = stage(cluster, "second", {"b": None, "c": None})
    job = run_job(cluster, [finalize_directive(first), finalize_directive(second)])
    assert job["JobState"] == "COMPLETED", job
    assert temporaries(first) == temporaries(second) == []
    assert (first / "x" / "a").is_file() and (second / "b").is_file() and (second / "c").is_file()
    *records, summary = report_of(first, job["JobId"])
    assert sum(r["kind"] == "file" and r["outcome"] == "committed" for r in records) == 3
    assert summary["exit_code"] == 0
    assert not list(second.glob("axl-finalize.*"))


@pytest.mark.parametrize("bad", ["missing", "unreadable"])
def test_bad_root_changes_nothing(cluster: slurmkit.Cluster, bad: str) -> None:
    good = stage(cluster, f"beside-{bad}", {"a": None, "b": None})
    before = sorted(p.name for p in good.iterdir())
    bad_root = cluster.base / "data" / f"{bad}-root"
    if bad == "unreadable":
        bad_root.mkdir(mode=0o700)  # root's
    job = run_job(cluster, [finalize_directive(good, bad_root)])
    assert job["JobState"] == "STAGE_OUT", job
    why = "no such directory" if bad == "missing" else "not readable"
    assert says(job, f"axl_finalize: {bad_root}: {why} (as uid {NOBODY}); nothing done")
    assert sorted(p.name for p in good.iterdir()) == before  # not even a report
    # Teardown after `scancel --hurry` deletes nothing: the temporaries wait for a rerun or cleanup.
    assert hurry(cluster, job["JobId"])["JobState"] != "STAGE_OUT"
    assert sorted(p.name for p in good.iterdir()) == before


def test_relative_root_is_an_error_in_the_reason(cluster: slurmkit.Cluster) -> None:
    good = stage(cluster, "beside-relative", {"a": None})
    before = sorted(p.name for p in good.iterdir())
    job = run_job(cluster, [finalize_directive(good, "relative/run42")])
    assert job["JobState"] == "STAGE_OUT", job
    assert says(job, "axl_finalize: relative/run42: not an absolute path"), job["Reason"]
    assert sorted(p.name for p in good.iterdir()) == before
    assert hurry(cluster, job["JobId"])["JobState"] != "STAGE_OUT"


@pytest.mark.skipif(LUA is None, reason="no lua interpreter (Debian: lua5.1)")
def test_check_at_submission_rejects_a_relative_root(tmp_path: Path) -> None:
    """The opt-in check a site's slurm_bb_job_process may call: sbatch then refuses the job."""
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n#BB_LUA axl_finalize relative/run42\ntrue\n")
    driver = tmp_path / "driver.lua"
    driver.write_text(
        "slurm = { SUCCESS = 0, ERROR = -1 }\n"
        "local M = dofile(arg[1])\n"
        "local rc, msg = M.job_process(arg[2])\n"
        "print(rc) print(msg)\n"
    )
    proc = subprocess.run(
        [str(LUA), str(driver), str(LUA_FILES[0]), str(script)], capture_output=True, text=True, check=True, timeout=30
    )
    assert proc.stdout.splitlines() == ["-1", "axl_finalize: relative/run42: not an absolute path"]


def test_hostile_temporary_is_refused(cluster: slurmkit.Cluster) -> None:
    root = stage(cluster, "hostile", {"good": None, "evil": None})
    canary = cluster.base / "canary"
    canary.write_bytes(b"root's own data\n")
    canary.chmod(0o600)
    os.utime(canary, ns=(1_000_000_000, 1_000_000_000))
    (evil,) = (t for t in temporaries(root) if t.name.startswith("evil."))
    evil.unlink()
    evil.symlink_to(canary)
    os.lchown(evil, NOBODY, NOBODY)
    job = run_job(cluster, [finalize_directive(root)])
    assert job["JobState"] == "STAGE_OUT", job
    assert says(job, "axl_finalize: finalize exited 4 (could not act on some temporaries, left in place)")
    st = canary.stat()
    assert (canary.read_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_mtime_ns) == (
        b"root's own data\n",
        0o600,
        0,
        1_000_000_000,
    )
    assert evil.is_symlink() and (root / "good").is_file() and not (root / "evil").exists()
    hurry(cluster, job["JobId"])


@pytest.mark.skipif(LUA is None, reason="no lua interpreter (Debian: lua5.1)")
def test_module_takes_the_uid_later_slurms_pass(cluster: slurmkit.Cluster, tmp_path: Path) -> None:
    """Slurm 23.02+ pass data_out the job's uid and gid (22.05, above, does not): the module uses them
    without asking scontrol, and refuses uid 0 before running anything."""
    root = stage(cluster, "uid-argument", {"a": None})
    script = tmp_path / "script"
    script.write_text(f"#!/bin/sh\n#BB_LUA {finalize_directive(root)}\ntrue\n")
    driver = tmp_path / "driver.lua"
    driver.write_text(
        "local M = dofile(arg[1])\n"
        "M.settings.scontrol = '/bin/false'\n"
        "local rc, msg = M.data_out(arg[2], arg[3], arg[4], arg[5], os.time())\n"
        "print(rc) print(msg)\n"
    )

    def data_out(uid: int) -> list[str]:
        proc = subprocess.run(
            [str(LUA), str(driver), str(LUA_FILES[0]), "77", str(script), str(uid), str(uid)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**cluster.env, "AXL_STATELESS": str(cluster.command)},
        )
        return proc.stdout.splitlines()

    before = sorted(p.name for p in root.iterdir())
    assert data_out(0) == ["-1", "axl_finalize: the job runs as root, refused; nothing done"]
    assert sorted(p.name for p in root.iterdir()) == before
    rc, msg = data_out(NOBODY)
    assert rc == "0" and msg.startswith("axl_finalize: finalize: "), msg
    assert temporaries(root) == [] and (root / "a").is_file()
    assert report_of(root, "77")[-1]["exit_code"] == 0


@pytest.mark.skipif(LUA is None, reason="no lua interpreter (Debian: lua5.1)")
def test_module_passes_finalize_exact_arguments(cluster: slurmkit.Cluster, tmp_path: Path) -> None:
    """What finalize is given, through setpriv and two shells: every root one argument whatever it holds,
    the report in the first root, a wait timeout StageOutTimeout (30 s here) less its margin (10 s), the
    site's extra options; the environment emptied but PATH and LANG."""
    roots = [cluster.base / "data" / "odd $HOME 'q' \"x\" ;true", cluster.base / "data" / "plain"]
    for r in roots:
        r.mkdir()
    echo = cluster.base / "echo-args"
    echo.write_text('#!/bin/sh\nprintf \'%s|\' "$@" "uid=$(id -u)" "HOME=${HOME-unset}"; echo\n')
    echo.chmod(0o755)
    script = tmp_path / "script"
    script.write_text(f"#!/bin/sh\n#BB_LUA {finalize_directive(*roots)}\ntrue\n")
    driver = tmp_path / "driver.lua"
    driver.write_text(
        "local M = dofile(arg[1])\n"
        "M.settings.finalize_options = { '--jobs', '3' }\n"
        "local rc, msg = M.data_out('78', arg[2], '65534', '65534')\n"
        "print(rc) print(msg)\n"
    )
    # A report an earlier run of this job's stage-out left is kept: this run writes beside it.
    (roots[0] / "axl-finalize.78.jsonl").write_text("earlier\n")
    (roots[0] / "axl-finalize.78.2.jsonl").write_text("earlier\n")
    proc = subprocess.run(
        [str(LUA), str(driver), str(LUA_FILES[0]), str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**cluster.env, "AXL_STATELESS": str(echo), "HOME": "/root"},
    )
    rc, msg = proc.stdout.splitlines()
    args, _, report = msg.removeprefix("axl_finalize: ").partition("; report ")
    assert rc == "0" and report == f"{roots[0]}/axl-finalize.78.3.jsonl", msg
    assert args.split("|") == [
        "finalize",
        "--report",
        report,
        "--wait-timeout",
        "20",
        "--jobs",
        "3",
        "--",
        *map(str, roots),
        f"uid={NOBODY}",
        "HOME=unset",
        "",
    ]
