"""A one-machine Slurm for the stage-out tests: munged, slurmctld and slurmd from the distribution's
packages, on localhost, in a world-searchable scratch directory under /tmp, with burst_buffer/lua running
tools/slurm/burst_buffer.lua; and a virtual environment holding this checkout's axlstateless, which the
job's user can run (the test interpreter may live under a home directory that user cannot enter).

Every daemon is started here with a known pid and stopped by that pid (then its process group, which
catches slurmctld's slurmscriptd), whatever happens: at fixture teardown and, failing that, at exit."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bbkit import PACKAGE_ROOT

TOOLS = Path(PACKAGE_ROOT) / "tools" / "slurm"
PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "setpriv", "runuser")
PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm", "/usr/lib64/slurm")
JOB_USER = "nobody"
STAGE_OUT_TIMEOUT = 30


def missing() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    if os.geteuid() != 0:
        return "needs root (to start munged, slurmctld and slurmd and to submit as another user)"
    absent = [p for p in PROGRAMS if shutil.which(p) is None]
    if absent:
        return f"Slurm packages not installed (no {', '.join(absent)}): see .ci/run"
    if not any(Path(d, "burst_buffer_lua.so").exists() for d in PLUGIN_DIRS):
        return "no burst_buffer_lua.so (package slurm-wlm-basic-plugins)"
    try:
        pwd.getpwnam(JOB_USER)
    except KeyError:
        return f"no user {JOB_USER} to run jobs as"
    return None


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def job_python() -> str:
    """A Python 3.10+ the job's user can execute, to build the job's virtual environment from."""
    candidates = ["/usr/bin/python3", shutil.which("python3") or ""]
    for py in candidates:
        if py and os.path.exists(py):
            probe = subprocess.run(
                ["runuser", "-u", JOB_USER, "--", py, "-c", "import sys, venv; assert sys.version_info >= (3, 10)"],
                capture_output=True,
                check=False,
                timeout=30,
            )
            if probe.returncode == 0:
                return py
    raise RuntimeError(f"no Python 3.10+ with venv that {JOB_USER} can run (tried {candidates})")


def build_venv(base: Path) -> Path:
    """Install this checkout (a copy: pip would write build files into it) into a virtual environment
    under `base`, the way a site installs a tool its users' jobs run; returns its axl-stateless."""
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(Path(PACKAGE_ROOT, name), src / name)
    shutil.copytree(
        Path(PACKAGE_ROOT, "axlstateless"), src / "axlstateless", ignore=shutil.ignore_patterns("__pycache__")
    )
    venv = base / "venv"
    subprocess.run([job_python(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    # The test interpreter's pip installs into the new environment (pip's --python), so the environment
    # needs no pip of its own; setuptools there first spares the isolated build environment (seconds).
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet"]
    pip += ["--disable-pip-version-check"]
    for args in (["click>=8.1", "xattr>=1.0", "setuptools>=68"], ["--no-deps", "--no-build-isolation", str(src)]):
        proc = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join([*pip, *args])} failed:\n{proc.stdout}{proc.stderr}")
    return venv / "bin" / "axl-stateless"


@dataclass
class Cluster:
    base: Path
    command: Path = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: Seconds spent building the job's virtual environment and starting the daemons (printed by the tests).
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.base / "etc" / "slurm.conf")}

    def start(self) -> None:
        b = self.base
        for d in ("etc", "munge", "state", "spool", "run", "log", "jobs", "data"):
            (b / d).mkdir(mode=0o755)
        started = time.monotonic()
        self.command = build_venv(b)
        self.timings["venv"] = time.monotonic() - started
        started = time.monotonic()
        ctld_port, slurmd_port = free_ports(2)
        (b / "etc" / "slurm.conf").write_text(
            SLURM_CONF.format(b=b, ctld_port=ctld_port, slurmd_port=slurmd_port, cpus=max(2, os.cpu_count() or 2))
        )
        (b / "etc" / "burst_buffer.conf").write_text(
            f"Directive=BB_LUA\nStageInTimeout=30\nStageOutTimeout={STAGE_OUT_TIMEOUT}\nOtherTimeout=30\n"
        )
        for name in ("burst_buffer.lua", "axl_stateless.lua"):
            shutil.copy2(TOOLS / name, b / "etc" / name)
        key = b / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, timeout=30, capture_output=True)
        self.spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--socket={b}/munge/munge.socket.2",
                f"--key-file={key}",
                f"--log-file={b}/munge/munged.log",
                f"--pid-file={b}/munge/munged.pid",
                f"--seed-file={b}/munge/seed",
            ],
        )
        self.wait_for((b / "munge" / "munge.socket.2").exists, "munged's socket")
        # slurmctld reads AXL_STATELESS here and hands it to burst_buffer.lua (its environment is data_out's).
        self.spawn(
            "slurmctld", ["slurmctld", "-D", "-f", str(b / "etc" / "slurm.conf")], AXL_STATELESS=str(self.command)
        )
        self.wait_for(lambda: b"UP" in self.run(["scontrol", "ping"]).stdout, "slurmctld")
        self.spawn("slurmd", ["slurmd", "-D", "-f", str(b / "etc" / "slurm.conf")])
        self.wait_for(lambda: self.run(["sinfo", "-h", "-o", "%T"]).stdout.strip() == b"idle", "slurmd")
        self.timings["daemons"] = time.monotonic() - started

    def spawn(self, name: str, argv: list[str], **extra: str) -> None:
        with open(self.base / "log" / f"{name}.out", "wb") as out:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**self.env, **extra},
                    cwd=self.base,
                    start_new_session=True,
                )
            )

    def run(self, argv: list[str], input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(argv, input=input, capture_output=True, env=self.env, timeout=30, check=False)

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args!r} exited {p.returncode} while waiting for {what}: {self.logs()}")
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what}: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((self.base / "log").glob("*"))
        )

    def stop(self) -> None:
        """Stop every daemon started here, newest first (slurmd, slurmctld, munged), by pid: TERM, then
        KILL after a grace period, then KILL to the process group for any child left behind."""
        while self.procs:
            p = self.procs.pop()
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)

    def submit(self, script: str) -> subprocess.CompletedProcess[bytes]:
        """sbatch the script (on stdin) as the job's user; root may not use burst buffers."""
        return self.run(
            [
                "runuser",
                "-u",
                JOB_USER,
                "--",
                "sbatch",
                "--parsable",
                f"--chdir={self.base / 'jobs'}",
                "--output=/dev/null",
            ],
            input=script.encode(),
        )

    def job(self, jobid: str) -> dict[str, str]:
        out = self.run(["scontrol", "show", "job", "-o", jobid]).stdout.decode()
        fields: dict[str, str] = {}
        for word in out.split():
            key, sep, value = word.partition("=")
            if sep:
                fields[key] = value
        return fields

    def settle(self, jobid: str, timeout: float = 40) -> dict[str, str]:
        """Wait until the job has completed its stage-out, or stage-out failed (the job waits in
        STAGE_OUT with our message in its Reason); return its scontrol fields."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(jobid)
            state = job.get("JobState")
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                return job
            if state == "STAGE_OUT" and "axl_finalize" in job.get("Reason", ""):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {jobid} did not settle: {self.job(jobid)}\n{self.logs()}")


SLURM_CONF = """\
ClusterName=axltest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={b}/munge/munge.socket.2
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/run/slurmctld.pid
SlurmdPidFile={b}/run/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
DebugFlags=BurstBuffer,Script
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
BurstBufferType=burst_buffer/lua
NodeName=localhost CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster() -> Cluster:
    base = Path(tempfile.mkdtemp(prefix="axl-slurm-", dir="/tmp"))
    base.chmod(0o755)
    cluster = Cluster(base)
    atexit.register(cluster.stop)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
