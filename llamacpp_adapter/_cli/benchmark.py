"""``llamacpp-adapter bench``: the serving benchmark, and ``bench merge``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import msgspec

from .._adapter import LlamaCppHttpAdapter
from ..bench._config import ENDPOINTS
from .engine import engine_url
from .group import api_key_option, backend_option, count_option, main, positive_option
from .running import run

__all__ = ["bench", "bench_compare", "bench_merge"]

#: A benchmark runs on asyncio by default: there it costs the least per token, less than
#: a vLLM-style aiohttp client (benchmarks/NOTES.md, "The serving benchmark's own cost").
bench_backend_option = backend_option("asyncio", "asyncio costs the client least per token")

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
@count_option(
    "--concurrency",
    help="A closed loop: this many requests open at once, a new one as each ends.",
)
@positive_option(
    "--rate", help="An open loop: this many requests a second, at random (Poisson) times."
)
@positive_option(
    "--burstiness",
    default=1.0,
    help="With --rate: the gamma shape of the gaps (1: Poisson; lower: burstier).",
)
@count_option("--max-concurrency", help="With --rate: the most requests open at once.")
@count_option(
    "--requests", help="Requests to measure (default 100, or as many as --duration allows)."
)
@positive_option("--duration", help="Seconds to send requests for.")
@count_option(
    "--warmup", minimum=0, default=1, help="Requests sent first and not counted (0: none)."
)
@click.option(
    "--input-tokens",
    default="32",
    show_default=True,
    help="Prompt length in tokens, N or LOW:HIGH (exact: built with the server's tokenizer).",
)
@count_option(
    "--output-tokens",
    default=64,
    help="Tokens each request generates (exact: the end of sequence is ignored).",
)
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    help='A JSONL file of prompts ({"prompt": "...", "max_tokens": N}) instead.',
)
@count_option(
    "--prefix-tokens",
    minimum=0,
    default=0,
    help="Synthetic prompts that begin with a shared prefix of this many tokens (a system "
    "prompt), then the request's own --input-tokens.",
)
@count_option(
    "--prefix-groups",
    default=1,
    help="With --prefix-tokens: how many prefixes, one at random each request.",
)
@click.option(
    "--conversations",
    "conversations_file",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    help="Multi-turn conversations from a file: ShareGPT's JSON, or JSONL of "
    '{"turns": ["...", ...]}. Each turn sends the conversation so far, the model\'s own '
    "answers in it, under the conversation's session key; --requests, --concurrency and "
    "--rate then count conversations.",
)
@count_option(
    "--turns", help="Synthetic conversations of this many turns (instead of --conversations)."
)
@count_option(
    "--turn-tokens", default=100, help="With --turns: the tokens of each of the user's messages."
)
@click.option(
    "--think-time",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds between a turn's answer and the conversation's next turn.",
)
@positive_option(
    "--read-timeout",
    help="Seconds to wait for a server's next bytes before a request fails (default 60).",
)
@click.option(
    "--endpoint",
    type=click.Choice(ENDPOINTS),
    default="completion",
    show_default=True,
    help="completion: llama.cpp's /completion; chat: /v1/chat/completions, each prompt a "
    "user's turn (its input tokens counted by the server, the chat template's included).",
)
@count_option(
    "--seed", minimum=0, default=0, help="The seed of the prompt lengths and the arrivals."
)
@click.option(
    "--slo",
    metavar="NAME=MS,...",
    help="Service level objectives: ttft_ms, tpot_ms, itl_ms or e2el_ms for each request "
    "(goodput: the requests a second that met all of them), or with a percentile, "
    "p99_ttft_ms, for the run's.",
)
@click.option(
    "--slo-attainment",
    type=float,
    default=0.9,
    show_default=True,
    help="With --slo: the share of requests that must meet the requests' objectives for "
    "the run to meet them.",
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
    "--strict",
    is_flag=True,
    help="Exit 1 when the client limited the run (its event loop lagged, it sent late or "
    "short of the rate, or it used most of a core): the figures describe the client.",
)
@count_option(
    "--workers",
    default=1,
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
    prefix_tokens: int,
    prefix_groups: int,
    conversations_file: Path | None,
    turns: int | None,
    turn_tokens: int,
    think_time: float,
    read_timeout: float | None,
    endpoint: str,
    seed: int,
    slo: str | None,
    slo_attainment: float,
    json_path: Path | None,
    plot_path: Path | None,
    strict: bool,
    workers: int,
    worker: bool,
) -> None:
    """Benchmark llama-server as a serving system: time to first token, time per output
    token, inter-token latency and throughput, by vLLM's names; then the client's own
    CPU per token, the server's view, and whether their token counts agree.

    `bench merge A.json B.json` merges the results of runs made at the same time (on
    several machines against one pool, say); `bench compare A.json B.json` sets saved
    results side by side, with the change of each figure; `bench [options] sweep
    --concurrencies 1,2,4` runs a load curve.
    """
    sweeping = context.invoked_subcommand == "sweep"
    if context.invoked_subcommand is not None and not sweeping:
        return
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError(
                "--plot needs matplotlib: in a clone, pip install -e '.[plot]'"
            ) from None
    from ..bench._config import BenchConfig
    from ..bench._load import Load
    from ..bench._slo import parse_objectives

    if concurrency is not None and rate is not None:
        raise click.UsageError("give --concurrency (a closed loop) or --rate (an open loop)")
    if sweeping and workers > 1:
        raise click.UsageError("a sweep runs its points in one process: no --workers")
    if rate is None and max_concurrency is not None and not sweeping:
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
            prefix_tokens=prefix_tokens,
            prefix_groups=prefix_groups,
            conversations_file=conversations_file,
            turns=turns,
            turn_tokens=turn_tokens,
            think_time_s=think_time,
            read_timeout_s=read_timeout,
            endpoint=endpoint,
            api_key=api_key,
            seed=seed,
            sample_server=not worker,
            objectives=() if slo is None else parse_objectives(slo),
            attainment=slo_attainment,
        )
        if workers > 1:
            from ..bench._workers import worker_configs

            worker_configs(config, workers)  # a share of each for each
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    command = ["llamacpp-adapter", *sys.argv[1:]]
    if sweeping:
        context.obj = _SweepSettings(
            config, backend, (json_path, plot_path), command, strict, max_concurrency, not urls
        )
        return
    outputs = (json_path, plot_path)
    limited = _run_on_engine(
        _bench, config, outputs, command, workers, worker, local=not urls, backend=backend
    )
    _exit_if_limited(context, strict=strict, limited=limited)


def _run_on_engine(function: Any, config: Any, *args: Any, local: bool, backend: str) -> bool:
    """Run *function* (*config*, *args*) on *backend*, against a local server started for
    the run when *local* (no ``--url`` was given); whether the client limited it."""
    with contextlib.ExitStack() as stack:
        if local:
            url = stack.enter_context(
                engine_url(None, parallel=_BENCH_LOCAL_SLOTS, context=_BENCH_LOCAL_SLOTS * 4096)
            )
            config = dataclasses.replace(config, urls=(url,))
        return bool(run(function, config, *args, backend=backend))


def _exit_if_limited(context: click.Context, *, strict: bool, limited: bool) -> None:
    if strict and limited:
        click.echo("-- limited by the client (--strict)", err=True)
        context.exit(1)


def _write_json(path: Path, value: Any) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(value), indent=2))


@dataclasses.dataclass(frozen=True)
class _SweepSettings:
    """What ``bench``'s options made for ``bench sweep``."""

    config: Any
    backend: str
    outputs: tuple[Path | None, Path | None]
    command: list[str]
    strict: bool
    #: The cap on the requests open at once of a sweep of rates.
    max_concurrency: int | None
    #: Whether no --url was given: a local server runs the sweep.
    local: bool


@bench.command("sweep")
@click.option(
    "--rates", metavar="R,R,...", help="Open loops at these rates (requests/s), one run each."
)
@click.option(
    "--concurrencies", metavar="N,N,...", help="Closed loops of these concurrencies, one run each."
)
@click.option(
    "--find-max",
    is_flag=True,
    help="After the loads given, double the load until throughput grows by less than 10% "
    "or a run misses its --slo.",
)
@click.pass_context
def bench_sweep(
    context: click.Context, rates: str | None, concurrencies: str | None, find_max: bool
) -> None:
    """A load curve: one run at each load (bench's options, before `sweep`, say what each
    run sends), then the peak throughput, the knee and the highest load that met the
    --slo. With --json, every point's result; with --plot, the curve."""
    from ..bench._sweep import FIND_MAX_MIN_REQUESTS, parse_points

    settings: _SweepSettings = context.obj
    if (rates is None) == (concurrencies is None):
        raise click.UsageError("give --rates or --concurrencies")
    kind = "rate" if rates is not None else "concurrency"
    try:
        option = "--rates" if kind == "rate" else "--concurrencies"
        points = parse_points(rates or concurrencies or "", option, whole=kind == "concurrency")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    requests = settings.config.requests
    if find_max and requests is not None and requests < FIND_MAX_MIN_REQUESTS:
        raise click.UsageError(
            f"--find-max needs at least {FIND_MAX_MIN_REQUESTS} --requests a point to tell "
            "one point from the next"
        )
    limited = _run_on_engine(
        _sweep,
        settings.config,
        kind,
        points,
        find_max,
        settings,
        local=settings.local,
        backend=settings.backend,
    )
    _exit_if_limited(context, strict=settings.strict, limited=limited)


async def _sweep(
    config: Any, kind: str, loads: list[float], find_max: bool, settings: _SweepSettings
) -> bool:
    """Run the sweep and report it; whether the client limited any point."""
    from ..bench._report import sweep_table
    from ..bench._run import run_bench
    from ..bench._sweep import next_load, summarize_sweep

    points: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    queue = list(loads)
    while queue:
        load = queue.pop(0)
        if kind == "concurrency":
            shaped = dataclasses.replace(config.load, concurrency=int(load), rate=None)
        else:
            cap = settings.max_concurrency
            shaped = dataclasses.replace(config.load, rate=load, concurrency=cap)
        result = await run_bench(dataclasses.replace(config, load=shaped))
        figures = result.as_json()
        results.append(figures)
        point = _point(load, figures)
        points.append(point)
        click.echo(
            f"-- {kind} {load:g}: {point['output_throughput']:.0f} tokens/s, "
            f"TTFT p99 {point['p99_ttft_ms']:.1f} ms",
            err=True,
        )
        if not queue and find_max and (following := next_load(points)) is not None:
            queue.append(following)
    sweep = {"kind": kind, "points": points, "summary": summarize_sweep(points)}
    click.echo(sweep_table(sweep))
    json_path, plot_path = settings.outputs
    if json_path is not None:
        written = {
            "sweep": sweep,
            "results": results,
            "command": settings.command,
            "versions": _versions(),
            "config": _config_json(config),
        }
        _write_json(json_path, written)
        click.echo(f"-- written to {json_path}", err=True)
    if plot_path is not None:
        from ..bench._plot import write_sweep_plot

        write_sweep_plot(sweep, plot_path, config.objectives)
        click.echo(f"-- drawn to {plot_path}", err=True)
    return any(p["limited_by_client"] for p in points)


def _point(load: float, figures: dict[str, Any]) -> dict[str, Any]:
    """A sweep's point: its load and the figures its curve and summary need."""
    slo = figures.get("slo")
    audit = figures.get("audit") or {}
    return {
        "load": load,
        "output_throughput": figures["output_throughput"],
        "request_throughput": figures["request_throughput"],
        "completed": figures["completed"],
        "failed": figures["failed"],
        **{
            f"{p}_{name}_ms": figures[f"{p}_{name}_ms"]
            for p in ("p50", "p99")
            for name in ("ttft", "itl", "e2el")
        },
        "goodput": None if slo is None else slo["goodput"],
        "slo_met": None if slo is None else slo["met"],
        "limited_by_client": bool(audit.get("limited_by_client")),
        "tokens_equal": figures["token_check"]["equal"],
    }


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
) -> bool:
    """Run the benchmark and report it; whether the client limited it."""
    json_path, plot_path = outputs
    limited = False
    from ..bench._report import summary_table
    from ..bench._results import BenchResult
    from ..bench._run import run_bench
    from ..bench._workers import run_workers

    props = []
    for url in config.urls:
        async with LlamaCppHttpAdapter(url, api_key=config.api_key) as adapter:
            health = await adapter.health()
            if not health.live:
                raise click.UsageError(f"--url {url}: {health.message or health.status}")
            props.append(await adapter.props_json())

    def report(figures: dict[str, Any]) -> None:
        nonlocal limited
        limited = bool(figures.get("audit", {}).get("limited_by_client"))
        if not worker:
            click.echo(summary_table(figures))
        if json_path is not None:
            figures.update(
                command=command,
                versions=_versions(),
                server_props=props,
                config=_config_json(config),
            )
            _write_json(json_path, figures)
            if not worker:
                click.echo(f"-- written to {json_path}", err=True)
        if plot_path is not None:
            from ..bench._plot import write_plot

            write_plot(figures, plot_path)
            click.echo(f"-- drawn to {plot_path}", err=True)

    try:
        if workers > 1:
            await run_workers(config, workers, on_result=report)
        else:
            progress = Progress(None if worker else config.requests)

            def finished(result: BenchResult) -> None:
                progress.close()
                report(result.as_json())

            await run_bench(config, on_request=progress.step, on_result=finished)
    except ValueError as exc:  # the prompts file's contents
        raise click.UsageError(str(exc)) from None
    return limited


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
    from ..bench._report import summary_table
    from ..bench._results import merge_results

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
        _write_json(json_path, merged)


@bench.command("compare")
@click.argument(
    "results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def bench_compare(results: tuple[Path, ...]) -> None:
    """Compare saved results (--json): each figure side by side, with the change of each
    from the first result."""
    from ..bench._compare import compare

    loaded = []
    for path in results:
        try:
            result = json.loads(path.read_text())
        except ValueError as exc:
            raise click.UsageError(f"{path}: not JSON ({exc})") from None
        if not isinstance(result, dict) or not ("completed" in result or "sweep" in result):
            raise click.UsageError(f"{path}: not a result of llamacpp-adapter bench")
        loaded.append(result)
    try:
        rows = compare(loaded, [path.stem for path in results])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        click.echo("  ".join(cells).rstrip())
        if number == 0:
            click.echo("  ".join("-" * w for w in widths))


class Progress:
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
    for name in ("prompts_file", "conversations_file"):
        path = getattr(config, name)
        fields[name] = None if path is None else str(path)
    fields.pop("api_key", None)  # a secret: never written
    return fields
