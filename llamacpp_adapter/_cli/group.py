"""The ``llamacpp-adapter`` command group, and the options its commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import click

from .._host.host import ENV_API_KEY

__all__ = [
    "BACKENDS",
    "api_key_option",
    "backend_option",
    "count_option",
    "main",
    "positive_option",
    "required_url_option",
    "url_option",
]

#: The event loops a command can run on.
BACKENDS = ("trio", "asyncio")

#: What click's option decorators are.
Decorator: TypeAlias = Callable[[Callable[..., Any]], Callable[..., Any]]

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


def backend_option(default: str = "trio", why: str = "") -> Decorator:
    """``--backend``: the event loop to run on, *default* unless given (*why* says why
    it is the default)."""
    return click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default=default,
        show_default=True,
        help=f"The event loop to run on{f' ({why})' if why else ''}.",
    )


def count_option(*names: str, help: str, default: int | None = None, minimum: int = 1) -> Decorator:
    """An option that takes a count of at least *minimum*."""
    return click.option(
        *names,
        type=click.IntRange(min=minimum),
        default=default,
        show_default=default is not None,
        help=help,
    )


def positive_option(
    *names: str, help: str, default: float | None = None, maximum: float | None = None
) -> Decorator:
    """An option that takes a number above 0 (and at most *maximum*)."""
    return click.option(
        *names,
        type=click.FloatRange(min=0, min_open=True, max=maximum),
        default=default,
        show_default=default is not None,
        help=help,
    )


@click.group()
@click.version_option(package_name="llamacpp-adapter")
def main() -> None:
    """Drive llama.cpp's HTTP server: typed, ordered token streams."""
