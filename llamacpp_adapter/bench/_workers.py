"""A serving benchmark in several client processes, so that one Python process is never
the limit: each worker runs ``llamacpp-adapter bench`` with its share of the load and
writes its result; the run merges them (:func:`merge_results`) and measures the server
over the whole, itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .._adapter import LlamaCppHttpAdapter
from .._host.host import ENV_API_KEY
from ._config import BenchConfig
from ._results import merge_results
from ._run import bench_adapters
from ._server_view import counter_growth, server_view, token_check, tokens_predicted, watch_server
from ._slo import objectives_text

__all__ = ["run_workers", "shares", "worker_arguments"]

#: How long a worker may take to write its result once asked to stop.
_STOP_WAIT_S = 30.0


def shares(total: int, workers: int) -> list[int]:
    """*total* split over *workers* as evenly as it goes, the larger shares first."""
    return [total // workers + (i < total % workers) for i in range(workers)]


def worker_configs(config: BenchConfig, workers: int) -> list[BenchConfig]:
    """Each worker's share of *config*: its concurrency, rate, requests and warm-up, and
    a seed of its own (so that no two send the same prompts at the same times).

    Raises:
        ValueError: when a share would be empty (fewer streams or requests than
            workers).
    """
    load = config.load
    if load.concurrency is not None and load.concurrency < workers:
        raise ValueError(f"{workers} workers need a concurrency of at least {workers}")
    if config.requests is not None and config.requests < workers:
        raise ValueError(f"{workers} workers need at least {workers} requests")
    caps = shares(load.concurrency, workers) if load.concurrency is not None else None
    counts = shares(config.requests, workers) if config.requests is not None else None
    warmups = shares(config.warmup, workers)
    return [
        dataclasses.replace(
            config,
            load=dataclasses.replace(
                load,
                concurrency=None if caps is None else caps[i],
                rate=None if load.rate is None else load.rate / workers,
                seed=load.seed + i,
            ),
            requests=None if counts is None else counts[i],
            warmup=warmups[i],
            seed=config.seed + i,
            sample_server=False,
        )
        for i in range(workers)
    ]


def worker_arguments(config: BenchConfig, json_path: Path) -> list[str]:
    """The command line of a worker that runs *config* and writes its result to
    *json_path* (the API key goes in its environment, never on a command line)."""
    load = config.load
    arguments = [sys.executable, "-m", "llamacpp_adapter", "bench", "--worker"]
    for url in config.urls:
        arguments += ["--url", url]
    if load.rate is None:
        arguments += ["--concurrency", str(load.concurrency)]
    else:
        arguments += ["--rate", repr(load.rate), "--burstiness", repr(load.burstiness)]
        if load.concurrency is not None:
            arguments += ["--max-concurrency", str(load.concurrency)]
    if config.requests is not None:
        arguments += ["--requests", str(config.requests)]
    if config.duration_s is not None:
        arguments += ["--duration", repr(config.duration_s)]
    low, high = config.input_tokens
    arguments += [
        "--warmup", str(config.warmup),
        "--input-tokens", f"{low}:{high}",
        "--output-tokens", str(config.output_tokens),
        "--seed", str(config.seed),
        "--json", str(json_path),
    ]  # fmt: skip
    if config.prompts_file is not None:
        arguments += ["--prompts", str(config.prompts_file)]
    if config.conversations_file is not None:
        arguments += ["--conversations", str(config.conversations_file)]
    if config.turns is not None:
        arguments += ["--turns", str(config.turns), "--turn-tokens", str(config.turn_tokens)]
    if config.prefix_tokens:
        arguments += ["--prefix-tokens", str(config.prefix_tokens)]
        arguments += ["--prefix-groups", str(config.prefix_groups)]
    if config.think_time_s:
        arguments += ["--think-time", repr(config.think_time_s)]
    if config.read_timeout_s is not None:
        arguments += ["--read-timeout", repr(config.read_timeout_s)]
    if config.endpoint != "completion":
        arguments += ["--endpoint", config.endpoint]
    if config.objectives:
        slo = objectives_text(config.objectives)
        arguments += ["--slo", slo, "--slo-attainment", repr(config.attainment)]
    return arguments


async def run_workers(
    config: BenchConfig,
    workers: int,
    *,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run *config* in *workers* client processes at once and return the merged result
    (``as_json()`` form), with the server's view over the whole run. Cancelled, it asks
    each worker to stop (SIGINT: it closes its streams and writes what it measured),
    and tells *on_result* of the merged partial result."""
    configs = worker_configs(config, workers)
    environment = dict(os.environ)
    if config.api_key is not None:
        environment[ENV_API_KEY] = config.api_key
    with tempfile.TemporaryDirectory(prefix="llamacpp-adapter-bench-") as folder:
        paths = [Path(folder) / f"worker-{i}.json" for i in range(workers)]
        async with _Adapters(config) as adapters:
            before = [await tokens_predicted(a) for a in adapters]
            slots: list[tuple[float, int]] = []
            deferred: list[float] = []
            started = time.perf_counter()

            def clock() -> float:
                return time.perf_counter() - started

            processes: list[anyio.abc.Process] = []
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(
                        watch_server,
                        adapters,
                        lambda: time.perf_counter() - started,
                        slots,
                        deferred,
                    )
                    for worker, path in zip(configs, paths, strict=True):
                        processes.append(
                            await anyio.open_process(
                                worker_arguments(worker, path), env=environment, stdout=None
                            )
                        )
                    for process in processes:
                        await process.wait()
                    group.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(processes)
                    after = [await tokens_predicted(a) for a in adapters]
                    merged = _merge(paths, processes, before, after, slots, deferred)
                    if on_result is not None:
                        on_result(merged)
    return merged


class _Adapters:
    """The run's adapters, one per URL, closed on the way out."""

    def __init__(self, config: BenchConfig) -> None:
        self._adapters = bench_adapters(config)

    async def __aenter__(self) -> list[LlamaCppHttpAdapter]:
        return self._adapters

    async def __aexit__(self, *exc: object) -> None:
        for adapter in self._adapters:
            await adapter.aclose()


async def _stop(processes: Sequence[anyio.abc.Process]) -> None:
    """Ask the workers still running to stop, and wait for them to write."""
    running = [p for p in processes if p.returncode is None]
    for process in running:
        process.send_signal(signal.SIGINT)
    with anyio.move_on_after(_STOP_WAIT_S):
        for process in running:
            await process.wait()
    for process in running:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _merge(
    paths: Sequence[Path],
    processes: Sequence[anyio.abc.Process],
    before: list[float | None],
    after: list[float | None],
    slots: list[tuple[float, int]],
    deferred: list[float],
) -> dict[str, Any]:
    results = [json.loads(path.read_text()) for path in paths if path.exists()]
    if not results:
        codes = [p.returncode for p in processes]
        raise RuntimeError(f"no worker wrote a result (exit codes {codes})")
    merged = merge_results(results)
    merged["partial"] = merged["partial"] or len(results) < len(paths)
    grown = counter_growth(before, after)
    if grown is not None:
        warmup = sum(int(r.get("warmup_output_tokens", 0)) for r in results)
        client = int(merged["total_output_tokens"]) + warmup
        merged["token_check"] = token_check(client, grown, unfinished=False)
    share = merged["server"]["prompt_cached_share"]  # from the requests' records
    merged["server"] = server_view(grown, slots, deferred) | {"prompt_cached_share": share}
    return merged
