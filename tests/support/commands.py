"""The command line as an operator meets it: the real command in a subprocess, and what
every error of it must look like."""

from __future__ import annotations

import subprocess
import sys

#: ``llamacpp-adapter``, run from this interpreter.
COMMAND = [sys.executable, "-m", "llamacpp_adapter"]


def run_command(*arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``llamacpp-adapter ARGUMENTS`` to its end; its exit code and output."""
    return subprocess.run(
        [*COMMAND, *arguments], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], says: str, code: int) -> None:
    """*result* failed as every command-line error must: one line on stderr, with no
    traceback, that says *says*, and exit code *code*."""
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert says in lines[0], lines[0]
    assert result.returncode == code, result.stderr
