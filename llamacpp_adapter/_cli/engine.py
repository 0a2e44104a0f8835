"""The engine a command uses: the one its ``--url`` names, or a local llama-server
started for it (with a tiny model written on the spot) and stopped after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import click

__all__ = ["engine_url"]


@contextlib.contextmanager
def engine_url(
    url: str | None,
    *,
    parallel: int = 1,
    context: int = 4096,
    model: Literal["bigram", "scripted"] = "bigram",
) -> Iterator[str]:
    """The given server's URL, or that of a local one started for the command (with the
    bigram model, or the scripted one that thinks and calls a tool)."""
    if url is not None:
        yield url
        return
    from .._local.server import EngineNotInstalled, LocalLlamaServer

    click.echo("-- starting a local llama-server with a tiny test model", err=True)
    try:
        with LocalLlamaServer(parallel=parallel, context=context, model=model) as server:
            yield server.base_url
    except ImportError as exc:
        raise click.ClickException(
            f"{exc}: install the engine extra (in a clone of the project, "
            "pip install -e '.[engine]') or give --url"
        ) from exc
    except (EngineNotInstalled, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
