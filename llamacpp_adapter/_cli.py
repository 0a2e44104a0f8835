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
import dataclasses
import json
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

import anyio
import click
import msgspec

from ._adapter import LlamaCppHttpAdapter
from ._exceptions import WorkerError
from ._host import ENV_API_KEY
from ._relay_server import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    MIN_TOKEN_CHARS,
    Relay,
    is_loopback,
)
from ._types import End, Metrics, TaskRequest, Token

_RELAY_TOKEN_VARIABLE = "LLAMACPP_ADAPTER_RELAY_TOKEN"
# Model output may hold control characters, escape sequences among them: show them as
# escapes rather than let them drive the terminal. Newline and tab pass.
_TERMINAL_SAFE = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c not in (0x09, 0x0A)}
_BACKENDS = ("trio", "asyncio")
#: The local model is sampled, not decoded greedily: its most likely path soon repeats.
_LOCAL_TEMPERATURE = 0.8
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
    "--url",
    help="The llama-server's base URL, e.g. http://127.0.0.1:8080. Without it, a local "
    "llama-server with a tiny test model is started for the command.",
    metavar="URL",
)
required_url_option = click.option(
    "--url",
    required=True,
    help="The llama-server's base URL, e.g. http://127.0.0.1:8080.",
    metavar="URL",
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
@click.argument("prompt", required=False)
@click.option(
    "--prompt-file",
    type=click.File("r", encoding="utf-8"),
    help="Read the prompt from this file ('-': standard input), for a long prompt.",
)
@url_option
@api_key_option
@backend_option
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="The most tokens to generate.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Sampling temperature; 0 is greedy, the same text every time. Default: 0, or "
    f"{_LOCAL_TEMPERATURE} with the local model.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=None,
    help="The sampling seed. It changes nothing at temperature 0 (greedy).",
)
@click.option("--ignore-eos", is_flag=True, help="Generate until max-tokens.")
def stream(
    prompt: str | None,
    prompt_file: TextIO | None,
    url: str | None,
    api_key: str | None,
    backend: str,
    max_tokens: int,
    temperature: float | None,
    seed: int | None,
    ignore_eos: bool,
) -> None:
    """Stream the completion of PROMPT to the terminal, then print a summary.

    PROMPT '-' reads it from standard input; --prompt-file reads it from a file. Without
    --url, start a local llama-server with a tiny model of a public-domain passage's word
    pairs (its text reads like the passage, loosely) and stop it afterwards.
    """
    if temperature is None:
        temperature = 0.0 if url is not None else _LOCAL_TEMPERATURE
    request = TaskRequest(
        _prompt(prompt, prompt_file),
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        extra={"ignore_eos": True} if ignore_eos else {},
    )
    with _server(url) as base_url:
        _run(_stream, base_url, api_key, request, backend=backend)


def _prompt(argument: str | None, file: TextIO | None) -> str:
    """The prompt, from the argument, standard input ('-') or a file; never empty."""
    if argument is not None and file is not None:
        raise click.UsageError("give the prompt as an argument or with --prompt-file, not both")
    if file is not None:
        text = file.read()
    elif argument == "-":
        text = sys.stdin.read()
    elif argument is not None:
        text = argument
    else:
        raise click.UsageError("give a prompt: PROMPT, '-' for standard input, or --prompt-file")
    if not text.strip():
        raise click.UsageError("the prompt is empty")
    return text


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
@required_url_option
@api_key_option
@backend_option
def health(url: str, api_key: str | None, backend: str) -> None:
    """Print the server's health (GET /health) as JSON; exit 1 if not ready."""
    if not _print_query(url, api_key, backend, "health").ready:
        sys.exit(1)


@main.command()
@required_url_option
@api_key_option
@backend_option
def props(url: str, api_key: str | None, backend: str) -> None:
    """Print what the server says about itself (GET /props and /slots) as JSON."""
    _print_query(url, api_key, backend, "props")


@main.command()
@url_option
@api_key_option
@click.option("--listen", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on (0: a free one, printed when listening).",
)
@click.option(
    "--token",
    envvar=_RELAY_TOKEN_VARIABLE,
    show_envvar=True,
    help="Bearer token every client must send (better given in the environment).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    help="Connections served at once; more are refused with HTTP 503.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True, max=86400),
    default=DEFAULT_IDLE_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for a client's task, and for a client that stops reading.",
)
@click.option("--allow-extra", is_flag=True, help="Let tasks carry extra llama.cpp fields.")
@click.option(
    "--allow-no-token",
    is_flag=True,
    help="Listen beyond loopback with no token: anyone who reaches the port may run tasks.",
)
@click.option(
    "--certfile",
    type=click.Path(exists=True, dir_okay=False),
    help="Serve wss:// with this certificate (PEM; with --keyfile, or holding the key).",
)
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="Its private key.")
def relay(
    url: str | None,
    api_key: str | None,
    listen: str,
    port: int,
    token: str | None,
    max_connections: int,
    idle_timeout: float,
    allow_extra: bool,
    allow_no_token: bool,
    certfile: str | None,
    keyfile: str | None,
) -> None:
    """Serve task streams from the llama-server over WebSocket until interrupted.

    A client sends one JSON task and receives its events as JSON messages. Without
    --url, start a local llama-server with a tiny model first.
    """
    if keyfile is not None and certfile is None:
        raise click.UsageError("--keyfile needs --certfile")
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise click.UsageError(f"the token must be at least {MIN_TOKEN_CHARS} characters")
    options: dict[str, Any] = {
        "token": token,
        "max_connections": max_connections,
        "idle_timeout_s": idle_timeout,
        "allow_extra": allow_extra,
        "allow_anonymous": allow_no_token,
        "ssl_context": None if certfile is None else _server_tls(certfile, keyfile),
    }
    if token is None and not is_loopback(listen):
        if not allow_no_token:
            raise click.UsageError(
                f"--listen {listen} with no token lets anyone who reaches it run tasks: give "
                f"--token (or {_RELAY_TOKEN_VARIABLE}), or --allow-no-token"
            )
        click.echo(
            f"-- warning: no token on {listen}: anyone who reaches it may run tasks", err=True
        )
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
        try:
            address = await tasks.start(relay.serve, listen, port)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise click.ClickException(f"cannot listen on {listen}:{port}: {why}") from None
        click.echo(f"-- relay listening on {address}", err=True)


def _server_tls(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"cannot load the certificate: {exc}") from None
    return context


def _print_query(url: str, api_key: str | None, backend: str, method: str) -> Any:
    """Call the adapter's *method* on the server, print the answer as JSON (indented on
    a terminal), return it."""
    result = _run(_call, url, api_key, method, backend=backend)
    encoded = msgspec.json.encode(result)
    if sys.stdout.isatty():
        encoded = msgspec.json.format(encoded, indent=2)
    click.echo(encoded)
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
    """The ``llamacpp-adapter`` command: :func:`main`, stopped cleanly by a signal, and
    every error one line on stderr: exit 2 for a bad invocation, 1 for a failure, 128 +
    the signal's number when stopped."""
    for each in _STOP_SIGNALS:
        signal.signal(each, _on_stop_signal)
    try:
        code = main(standalone_mode=False)
    except _Stopped as stopped:
        sys.exit(128 + stopped.signum)
    except click.ClickException as exc:
        # click.UsageError is one: its usage lines are left out for one line of error.
        name = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "error"
        click.echo(f"{name}: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(message: str) -> str:
    """*message* as one line: its first, and its last when there are more (as the end of
    a server's log says why it stopped)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} ... {lines[-1]}"


@contextlib.contextmanager
def _server(url: str | None, *, parallel: int = 1, context: int = 4096) -> Iterator[str]:
    """The given server's URL, or that of a local one started for the command."""
    if url is not None:
        yield url
        return
    from ._local_server import EngineNotInstalled, LocalLlamaServer

    click.echo("-- starting a local llama-server with a tiny test model", err=True)
    try:
        with LocalLlamaServer(parallel=parallel, context=context, model="bigram") as server:
            yield server.base_url
    except ImportError as exc:
        raise click.ClickException(
            f"{exc}: install the engine extra (in a clone of the project, "
            "pip install -e '.[engine]') or give --url"
        ) from exc
    except (EngineNotInstalled, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


# --- bench ---------------------------------------------------------------------------------

#: A benchmark runs on asyncio by default: there it costs the least per token, less than
#: a vLLM-style aiohttp client (benchmarks/NOTES.md, "The serving benchmark's own cost").
bench_backend_option = click.option(
    "--backend",
    type=click.Choice(_BACKENDS),
    default="asyncio",
    show_default=True,
    help="The event loop to run on (asyncio costs the client least per token).",
)

#: Slots of the local server a benchmark starts when given no --url.
_BENCH_LOCAL_SLOTS = 4


@main.group(invoke_without_command=True)
@click.option(
    "--url",
    "urls",
    multiple=True,
    metavar="URL",
    help="A llama-server's base URL; give it more than once for a pool of replicas. "
    f"Without it, a local llama-server with {_BENCH_LOCAL_SLOTS} slots is started.",
)
@api_key_option
@bench_backend_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="A closed loop: this many requests open at once, a new one as each ends.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="An open loop: this many requests a second, at random (Poisson) times.",
)
@click.option(
    "--burstiness",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="With --rate: the gamma shape of the gaps (1: Poisson; lower: burstier).",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    help="With --rate: the most requests open at once.",
)
@click.option(
    "--requests",
    type=click.IntRange(min=1),
    help="Requests to measure (default 100, or as many as --duration allows).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to send requests for.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Requests sent first and not counted (0: none).",
)
@click.option(
    "--input-tokens",
    default="32",
    show_default=True,
    help="Prompt length in tokens, N or LOW:HIGH (exact: built with the server's tokenizer).",
)
@click.option(
    "--output-tokens",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Tokens each request generates (exact: the end of sequence is ignored).",
)
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    help='A JSONL file of prompts ({"prompt": "...", "max_tokens": N}) instead.',
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The seed of the prompt lengths and the arrivals.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write every figure, the command line, versions and the server's props here.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Draw latency percentiles and throughput over time to this PNG (the plot extra).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Client processes that share the load, so that one Python process is never the "
    "limit; their results are merged.",
)
@click.option("--worker", is_flag=True, hidden=True, help="Run as one of --workers.")
@click.pass_context
def bench(
    context: click.Context,
    urls: tuple[str, ...],
    api_key: str | None,
    backend: str,
    concurrency: int | None,
    rate: float | None,
    burstiness: float,
    max_concurrency: int | None,
    requests: int | None,
    duration: float | None,
    warmup: int,
    input_tokens: str,
    output_tokens: int,
    prompts_file: Path | None,
    seed: int,
    json_path: Path | None,
    plot_path: Path | None,
    workers: int,
    worker: bool,
) -> None:
    """Benchmark llama-server as a serving system: time to first token, time per output
    token, inter-token latency and throughput, by vLLM's names; then the client's own
    CPU per token, the server's view, and whether their token counts agree.

    `bench merge A.json B.json` merges the results of runs made at the same time (on
    several machines against one pool, say).
    """
    if context.invoked_subcommand is not None:
        return
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError(
                "--plot needs matplotlib: in a clone, pip install -e '.[plot]'"
            ) from None
    from ._bench_load import Load
    from ._bench_run import BenchConfig

    if concurrency is not None and rate is not None:
        raise click.UsageError("give --concurrency (a closed loop) or --rate (an open loop)")
    if rate is None and max_concurrency is not None:
        raise click.UsageError("--max-concurrency goes with --rate")
    if concurrency is None and rate is None:
        concurrency = 1
    try:
        load = Load(
            concurrency=concurrency if rate is None else max_concurrency,
            rate=rate,
            burstiness=burstiness,
            seed=seed,
        )
        config = BenchConfig(
            urls=urls or ("local",),
            load=load,
            requests=requests if requests is not None or duration is not None else 100,
            duration_s=duration,
            warmup=warmup,
            input_tokens=_token_range(input_tokens),
            output_tokens=output_tokens,
            prompts_file=prompts_file,
            api_key=api_key,
            seed=seed,
            sample_server=not worker,
        )
        if workers > 1:
            from ._bench_workers import worker_configs

            worker_configs(config, workers)  # a share of each for each
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    command = ["llamacpp-adapter", *sys.argv[1:]]
    with contextlib.ExitStack() as stack:
        if not urls:
            local = stack.enter_context(
                _server(None, parallel=_BENCH_LOCAL_SLOTS, context=_BENCH_LOCAL_SLOTS * 4096)
            )
            config = dataclasses.replace(config, urls=(local,))
        outputs = (json_path, plot_path)
        _run(_bench, config, outputs, command, workers, worker, backend=backend)


def _token_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise ValueError(f"--input-tokens must be N or LOW:HIGH, not {text!r}") from None
    return bounds


async def _bench(
    config: Any,
    outputs: tuple[Path | None, Path | None],
    command: list[str],
    workers: int,
    worker: bool,
) -> None:
    json_path, plot_path = outputs
    from ._bench_report import summary_table
    from ._bench_run import BenchResult, run_bench
    from ._bench_workers import run_workers

    props = []
    for url in config.urls:
        async with LlamaCppHttpAdapter(url, api_key=config.api_key) as adapter:
            health = await adapter.health()
            if not health.live:
                raise click.UsageError(f"--url {url}: {health.message or health.status}")
            props.append(await adapter.props_json())

    def report(figures: dict[str, Any]) -> None:
        if not worker:
            click.echo(summary_table(figures))
        if json_path is not None:
            figures.update(
                command=command,
                versions=_versions(),
                server_props=props,
                config=_config_json(config),
            )
            json_path.write_bytes(msgspec.json.format(msgspec.json.encode(figures), indent=2))
            if not worker:
                click.echo(f"-- written to {json_path}", err=True)
        if plot_path is not None:
            from ._bench_plot import write_plot

            write_plot(figures, plot_path)
            click.echo(f"-- drawn to {plot_path}", err=True)

    try:
        if workers > 1:
            await run_workers(config, workers, on_result=report)
        else:
            progress = _Progress(None if worker else config.requests)

            def finished(result: BenchResult) -> None:
                progress.close()
                report(result.as_json())

            await run_bench(config, on_request=progress.step, on_result=finished)
    except ValueError as exc:  # the prompts file's contents
        raise click.UsageError(str(exc)) from None


@bench.command("merge")
@click.argument(
    "results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the merged result here.",
)
def bench_merge(results: tuple[Path, ...], json_path: Path | None) -> None:
    """Merge the JSON results of runs made at the same time into one, and print it."""
    from ._bench_report import summary_table
    from ._bench_run import merge_results

    loaded = []
    for path in results:
        try:
            loaded.append(json.loads(path.read_text()))
            merged = merge_results(loaded)
        except (ValueError, KeyError, TypeError) as exc:
            raise click.UsageError(
                f"{path}: not a result of llamacpp-adapter bench ({exc})"
            ) from None
    merged["merged_from"] = [str(path) for path in results]
    click.echo(summary_table(merged))
    if json_path is not None:
        json_path.write_bytes(msgspec.json.format(msgspec.json.encode(merged), indent=2))


class _Progress:
    """The run's progress on stderr: a live bar (tqdm) on a terminal, else a plain line a
    tenth of the run at a time; nothing with no total (a worker, or a run by duration
    alone)."""

    def __init__(self, total: int | None, *, live: bool | None = None) -> None:
        self._total = total
        self._done = 0
        self._tokens = 0
        self._started = time.perf_counter()
        self._tenths = 1  # the next line at this many tenths of the run
        self._bar: Any = None
        if total is not None and (sys.stderr.isatty() if live is None else live):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="req", file=sys.stderr, dynamic_ncols=True)

    def step(self, record: Any) -> None:
        self._done += 1
        self._tokens += record.output_tokens
        if self._total is None:
            return
        rate = self._tokens / max(time.perf_counter() - self._started, 1e-9)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{rate:.0f} tokens/s", refresh=False)
            self._bar.update(1)
            if self._done >= self._total:
                self._bar.close()
            return
        if self._done * 10 >= self._tenths * self._total:
            click.echo(f"-- {self._done}/{self._total} requests, {rate:.0f} tokens/s", err=True)
            while self._done * 10 >= self._tenths * self._total:
                self._tenths += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("llamacpp-adapter", "anyio", "trio", "httpx", "msgspec"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    found["python"] = sys.version.split()[0]
    return found


def _config_json(config: Any) -> dict[str, Any]:
    fields = dataclasses.asdict(config)
    fields["prompts_file"] = None if config.prompts_file is None else str(config.prompts_file)
    fields.pop("api_key", None)  # a secret: never written
    return fields
