"""How a command runs: on the event loop it names, stopped cleanly by a signal (Ctrl-C,
``kill``, a closed terminal), every error one line on stderr, and its exit code."""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, NoReturn

import anyio
import click

from .._exceptions import WorkerError
from .group import main

__all__ = ["Stopped", "entry", "run"]

#: The signals that stop a command: Ctrl-C, ``kill`` (and ``timeout``, a container stop),
#: a closed terminal. The command cleans up (a server it started is stopped, its files
#: removed) and exits 128 + the signal's number.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived (a BaseException, as KeyboardInterrupt is: it unwinds
    through everything, running every clean-up on the way)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run(function: Callable[..., Awaitable[Any]], *args: Any, backend: str) -> Any:
    """Run *function* on *backend* until it returns or a stop signal arrives; our errors
    become one line (``ClickException``).

    Raises:
        Stopped: when a stop signal arrived, once the run has unwound.
    """
    try:
        return anyio.run(until_stopped, function, args, backend=backend)
    except WorkerError as exc:
        raise click.ClickException(f"{exc.code}: {exc}") from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(exc.strerror or str(exc)) from exc


async def until_stopped(function: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> Any:
    """*function*'s result, or what it raised (one error, not a group); cancelled by a
    stop signal, which is raised as :class:`Stopped` after the clean-up."""
    outcome: dict[str, Any] = {}

    async def body(scope: anyio.CancelScope) -> None:
        try:
            outcome["value"] = await function(*args)
        except Exception as exc:
            outcome["error"] = single(exc)
        finally:
            scope.cancel()

    async def watch(signals: Any, scope: anyio.CancelScope) -> None:
        async for signum in signals:
            outcome["signal"] = int(signum)
            scope.cancel()
            return

    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch, signals, tasks.cancel_scope)
            tasks.start_soon(body, tasks.cancel_scope)
    if "signal" in outcome:
        raise Stopped(outcome["signal"])
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def single(error: Exception) -> Exception:
    """The one error inside nested exception groups; *error* itself otherwise."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def on_stop_signal(signum: int, frame: FrameType | None) -> NoReturn:
    # Outside an event loop (starting or stopping the local server): unwind from here.
    # A second signal while the first unwinds is ignored, so that the clean-up finishes.
    for each in STOP_SIGNALS:
        signal.signal(each, signal.SIG_IGN)
    raise Stopped(signum)


def entry() -> None:
    """The ``llamacpp-adapter`` command: :func:`main`, stopped cleanly by a signal, and
    every error one line on stderr: exit 2 for a bad invocation, 1 for a failure, 128 +
    the signal's number when stopped."""
    for each in STOP_SIGNALS:
        signal.signal(each, on_stop_signal)
    try:
        code = main(standalone_mode=False)
    except Stopped as stopped:
        sys.exit(128 + stopped.signum)
    except click.ClickException as exc:
        # click.UsageError is one: its usage lines are left out for one line of error.
        name = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "error"
        click.echo(f"{name}: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def one_line(message: str) -> str:
    """*message* as one line: its first, and its last when there are more (as the end of
    a server's log says why it stopped)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} ... {lines[-1]}"
