"""The command as an operator runs it, stopped by a signal: SIGTERM (``kill``, ``timeout``,
a container stop), SIGHUP (a closed terminal) and SIGINT (Ctrl-C). Each leaves no
llama-server process and no temporary folder, and exits 128 + the signal's number. A
SIGKILL, which the command cannot handle, leaves neither behind either."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ..support.resources import alive, engines

STARTUP_S = 120.0
STOP_S = 30.0
#: Seconds within which the engine of a killed command is gone.
ORPHAN_S = 2.0


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def engines_of(pid: int) -> list[int]:
    """The llama-server processes below a process: its keeper's children."""
    return [engine for keeper in children(pid) for engine in children(keeper)]


def wait_for_output(process: subprocess.Popen[bytes], *, stdout: bool) -> None:
    """Return once the process wrote a byte to stdout (or stderr)."""
    pipe = process.stdout if stdout else process.stderr
    assert pipe is not None
    ready, _, _ = select.select([pipe], [], [], STARTUP_S)
    assert ready, "the command wrote nothing in time"
    assert os.read(pipe.fileno(), 1)


def stop_and_check(process: subprocess.Popen[bytes], signum: int) -> None:
    found = engines_of(process.pid)
    assert len(found) == 1, found
    engine = found[0]
    folder = Path(os.readlink(f"/proc/{engine}/cwd"))
    assert folder.name.startswith("llamacpp-adapter-")
    process.send_signal(signum)
    try:
        code = process.wait(timeout=STOP_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 128 + signum
    assert_gone(engine, folder, within=STOP_S)
    assert process.stderr is not None
    errors = process.stderr.read().decode()
    assert "Traceback" not in errors, errors


def assert_gone(engine: int, folder: Path, *, within: float) -> None:
    """The engine ends, and its folder goes, within the bound."""
    deadline = time.monotonic() + within
    while (alive(engine) or folder.exists()) and time.monotonic() < deadline:
        time.sleep(0.02)  # polls another process's state; a bound, not a wait for a race
    assert not alive(engine), "llama-server outlived the command"
    assert not folder.exists(), "the temporary folder is left"


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "llamacpp_adapter", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the signal goes to the command alone, not to its group
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_while_streaming_stops_the_engine_it_started(signum: int) -> None:
    process = start("stream", "x", "--ignore-eos", "--max-tokens", "100000")
    with process:
        wait_for_output(process, stdout=True)  # a token: the stream runs
        stop_and_check(process, signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_relay_serves_stops_the_engine_it_started(signum: int) -> None:
    process = start("relay", "--port", "0")
    with process:
        assert process.stderr is not None
        line = b""
        while b"listening" not in line:  # the server is up and the relay listens
            wait_for_output(process, stdout=False)
            line += process.stderr.readline()
        stop_and_check(process, signum)


def test_a_signal_while_the_engine_starts_leaves_nothing_behind() -> None:
    before = set(Path(tempfile.gettempdir()).glob("llamacpp-adapter-*"))
    running = engines()
    process = start("stream", "x", "--max-tokens", "4")
    with process:
        assert process.stderr is not None
        assert b"starting a local llama-server" in process.stderr.readline()
        process.send_signal(signal.SIGTERM)  # while it writes the model or waits for it
        code = process.wait(timeout=STOP_S)
        errors = process.stderr.read().decode()
    assert code == 128 + signal.SIGTERM, errors
    assert "Traceback" not in errors, errors
    left = set(Path(tempfile.gettempdir()).glob("llamacpp-adapter-*")) - before
    assert not left
    assert not engines() - running, "a llama-server outlived the command"


def test_a_kill_of_the_command_leaves_no_engine_and_no_folder() -> None:
    """SIGKILL: the command runs no handler, yet its engine's keeper sees it go."""
    process = start("stream", "x", "--ignore-eos", "--max-tokens", "100000")
    with process:
        wait_for_output(process, stdout=True)
        (engine,) = engines_of(process.pid)
        folder = Path(os.readlink(f"/proc/{engine}/cwd"))
        process.kill()
        process.wait(timeout=STOP_S)
        assert_gone(engine, folder, within=ORPHAN_S)
