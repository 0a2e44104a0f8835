"""The ``llamacpp-adapter`` command line.

* ``llamacpp-adapter stream "PROMPT"``: stream a completion to the terminal as it comes,
  then a one-line summary. Without ``--url`` it starts a real llama-server with a tiny
  model it writes itself, and stops it afterwards.
* ``llamacpp-adapter health --url URL`` and ``llamacpp-adapter props --url URL``.
* ``llamacpp-adapter relay --url URL``: serve task streams over WebSocket (see
  :class:`Relay`) until interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Any, NoReturn

import anyio
import click
import msgspec

from ._adapter import LlamaCppHttpAdapter
from ._exceptions import WorkerError
from ._host import ENV_API_KEY
from ._relay_server import DEFAULT_MAX_CONNECTIONS, Relay
from ._types import End, Metrics, TaskRequest, Token

_RELAY_TOKEN_VARIABLE = "LLAMACPP_ADAPTER_RELAY_TOKEN"
# Model output may hold control characters, escape sequences among them: show them as
# escapes rather than let them drive the terminal. Newline and tab pass.
_TERMINAL_SAFE = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c not in (0x09, 0x0A)}
_BACKENDS = ("trio", "asyncio")
#: The signals that stop a command: Ctrl-C, ``kill`` (and ``timeout``, a container stop),
#: a closed terminal. The command cleans up (a server it started is stopped, its files
#: removed) and exits 128 + the signal's number.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stopped(BaseException):
    """A stop signal arrived (a BaseException, as KeyboardInterrupt is: it unwinds
    through everything, running every clean-up on the way)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


url_option = click.option(
    "--url", help="The llama-server's base URL, e.g. http://127.0.0.1:8080.", metavar="URL"
)
api_key_option = click.option(
    "--api-key",
    envvar=ENV_API_KEY,  # the same variable as AdapterHost.from_env()
    show_envvar=True,
    help="Bearer token for the server (better given in the environment).",
)
backend_option = click.option(
    "--backend",
    type=click.Choice(_BACKENDS),
    default="trio",
    show_default=True,
    help="The event loop to run on.",
)


@click.group()
@click.version_option(package_name="llamacpp-adapter")
def main() -> None:
    """Drive llama.cpp's HTTP server: typed, ordered token streams."""


@main.command()
@click.argument("prompt")
@url_option
@api_key_option
@backend_option
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None)
@click.option("--ignore-eos", is_flag=True, help="Generate until max-tokens.")
def stream(
    prompt: str,
    url: str | None,
    api_key: str | None,
    backend: str,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    ignore_eos: bool,
) -> None:
    """Stream the completion of PROMPT to the terminal, then print a summary.

    Without --url, start a local llama-server with a tiny random-weight model (its text
    is nonsense) and stop it afterwards.
    """
    request = TaskRequest(
        prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        extra={"ignore_eos": True} if ignore_eos else {},
    )
    with _server(url) as base_url:
        _run(_stream, base_url, api_key, request, backend=backend)


async def _stream(base_url: str, api_key: str | None, request: TaskRequest) -> None:
    out = sys.stdout
    started = time.perf_counter()
    engine = ""
    async with (
        LlamaCppHttpAdapter(base_url, api_key=api_key) as adapter,
        adapter.submit(request) as events,
    ):
        async for event in events:
            if isinstance(event, Token):
                out.write(event.text.translate(_TERMINAL_SAFE))
                out.flush()
            elif isinstance(event, Metrics):  # optional: an engine may send no timings
                engine = f" ({event.predicted_tokens_per_s:.1f} tokens/s in the engine)"
            elif isinstance(event, End):
                rate = event.tokens_out / (time.perf_counter() - started)
                out.write("\n")
                click.echo(
                    f"-- {event.tokens_out} tokens, {rate:.1f} tokens/s received{engine}, "
                    f"stop: {event.stop_reason}"
                )


@main.command()
@url_option
@api_key_option
@backend_option
def health(url: str | None, api_key: str | None, backend: str) -> None:
    """Print the server's health (GET /health) as JSON; exit 1 if not ready."""
    if not _print_query(url, api_key, backend, "health").ready:
        sys.exit(1)


@main.command()
@url_option
@api_key_option
@backend_option
def props(url: str | None, api_key: str | None, backend: str) -> None:
    """Print what the server says about itself (GET /props and /slots) as JSON."""
    _print_query(url, api_key, backend, "props")


@main.command()
@url_option
@api_key_option
@click.option("--listen", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option(
    "--token",
    envvar=_RELAY_TOKEN_VARIABLE,
    show_envvar=True,
    help="Bearer token every client must send (better given in the environment).",
)
@click.option("--max-connections", type=click.IntRange(min=1), default=DEFAULT_MAX_CONNECTIONS)
@click.option("--allow-extra", is_flag=True, help="Let tasks carry extra llama.cpp fields.")
def relay(
    url: str | None,
    api_key: str | None,
    listen: str,
    port: int,
    token: str | None,
    max_connections: int,
    allow_extra: bool,
) -> None:
    """Serve task streams from the llama-server over WebSocket until interrupted.

    A client sends one JSON task and receives its events as JSON messages. Without
    --url, start a local llama-server with a tiny model first.
    """
    options = {"token": token, "max_connections": max_connections, "allow_extra": allow_extra}
    with _server(url) as base_url:
        _run(_relay, base_url, api_key, listen, port, options, backend="trio")


async def _relay(
    base_url: str, api_key: str | None, listen: str, port: int, options: dict[str, Any]
) -> None:
    async with (
        LlamaCppHttpAdapter(base_url, api_key=api_key) as adapter,
        anyio.create_task_group() as tasks,
    ):
        relay = Relay(adapter, **options)
        address = await tasks.start(relay.serve, listen, port)
        click.echo(f"-- relay listening on {address}", err=True)


def _print_query(url: str | None, api_key: str | None, backend: str, method: str) -> Any:
    """Call the adapter's *method* on the server, print the answer as JSON, return it."""
    with _server(url) as base_url:
        result = _run(_call, base_url, api_key, method, backend=backend)
    click.echo(msgspec.json.encode(result))
    return result


async def _call(base_url: str, api_key: str | None, method: str) -> Any:
    async with LlamaCppHttpAdapter(base_url, api_key=api_key) as adapter:
        return await getattr(adapter, method)()


def _run(function: Callable[..., Awaitable[Any]], *args: Any, backend: str) -> Any:
    """Run *function* on *backend* until it returns or a stop signal arrives; our errors
    become one line (``ClickException``).

    Raises:
        _Stopped: when a stop signal arrived, once the run has unwound.
    """
    try:
        return anyio.run(_until_stopped, function, args, backend=backend)
    except WorkerError as exc:
        raise click.ClickException(f"{exc.code}: {exc}") from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(exc.strerror or str(exc)) from exc


async def _until_stopped(function: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> Any:
    """*function*'s result, or what it raised (one error, not a group); cancelled by a
    stop signal, which is raised as :class:`_Stopped` after the clean-up."""
    outcome: dict[str, Any] = {}

    async def body(scope: anyio.CancelScope) -> None:
        try:
            outcome["value"] = await function(*args)
        except Exception as exc:
            outcome["error"] = _single(exc)
        finally:
            scope.cancel()

    async def watch(signals: Any, scope: anyio.CancelScope) -> None:
        async for signum in signals:
            outcome["signal"] = int(signum)
            scope.cancel()
            return

    with anyio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch, signals, tasks.cancel_scope)
            tasks.start_soon(body, tasks.cancel_scope)
    if "signal" in outcome:
        raise _Stopped(outcome["signal"])
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _single(error: Exception) -> Exception:
    """The one error inside nested exception groups; *error* itself otherwise."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _on_stop_signal(signum: int, frame: FrameType | None) -> NoReturn:
    # Outside an event loop (starting or stopping the local server): unwind from here.
    # A second signal while the first unwinds is ignored, so that the clean-up finishes.
    for each in _STOP_SIGNALS:
        signal.signal(each, signal.SIG_IGN)
    raise _Stopped(signum)


def entry() -> None:
    """The ``llamacpp-adapter`` command: :func:`main`, stopped cleanly by a signal."""
    for each in _STOP_SIGNALS:
        signal.signal(each, _on_stop_signal)
    try:
        main()
    except _Stopped as stopped:
        sys.exit(128 + stopped.signum)


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    """The given server's URL, or that of a local one started for the command."""
    if url is not None:
        yield url
        return
    from ._local_server import EngineNotInstalled, LocalLlamaServer

    click.echo("-- starting a local llama-server with a tiny test model", err=True)
    try:
        with LocalLlamaServer(parallel=1) as server:
            yield server.base_url
    except (EngineNotInstalled, ImportError) as exc:
        raise click.ClickException(
            f"{exc}\nInstall the engine with: pip install 'llamacpp-adapter[engine]'"
        ) from exc
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
