"""Running a channel command of tasks/remote.py with the machine's /bin/sh and a `sudo` of our
own, first on PATH: what sudo was asked (its arguments) and what root would run (the file it
was given, read while sudo runs, with its mode)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

STUB = """#!/bin/sh
printf '%s\\n' "$@" > "$STUB_OUT/argv"
for last; do :; done
stat -c %a "$last" > "$STUB_OUT/mode"
cat "$last" > "$STUB_OUT/program"
exit "${STUB_EXIT:-0}"
"""


@dataclass(frozen=True)
class SudoCall:
    argv: list[str]         # sudo's arguments
    program: str            # what root would run: the file's content
    mode: str               # the file's mode while sudo ran
    file: Path              # the file, which must be gone once the command ended
    exited: int             # the command's exit status


def run_with_stub_sudo(command: str, tmp_path: Path, exit_status: int = 0) -> SudoCall:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sudo").write_text(STUB)
    (bin_dir / "sudo").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_OUT": str(tmp_path),
           "STUB_EXIT": str(exit_status)}
    done = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    argv = (tmp_path / "argv").read_text().splitlines()
    return SudoCall(argv, (tmp_path / "program").read_text(), (tmp_path / "mode").read_text().strip(),
                    Path(argv[-1]), done.returncode)
