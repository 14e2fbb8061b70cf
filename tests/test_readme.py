"""The README's commands are real: run its "Use" section's shell blocks in an empty directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def use_blocks() -> list[str]:
    text = README.read_text()
    use = text[text.index("## Use") : text.index("## Exit codes")]
    blocks = re.findall(r"```sh\n(.*?)```", use, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line and not line.endswith("# not run")]


def test_readme_use_section_runs(tmp_path: Path) -> None:
    lines = use_blocks()
    assert any(line.startswith("axl-stateless prestage") for line in lines)
    assert any(line.startswith("axl-stateless finalize") for line in lines)
    assert any(line.startswith("axl-stateless cleanup") for line in lines)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "axl-stateless"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m axlstateless "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    work = tmp_path / "work"
    work.mkdir()
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    proc = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = work / "pfs/run42/timestep.0"
    for rank in range(4):
        assert (final / f"data.{rank}").read_bytes() == (work / f"bb/ckpt/timestep.0/data.{rank}").read_bytes()
    assert (final / "data.1").stat().st_mode & 0o7777 == 0o444
    assert (work / "finalize.jsonl").read_text().strip().endswith("}")
