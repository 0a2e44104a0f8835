"""``llamacpp-adapter health`` and ``props``: what a llama-server says of itself, as JSON."""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec

from .._adapter import LlamaCppHttpAdapter
from .group import api_key_option, backend_option, main, required_url_option
from .running import run

__all__ = ["health", "props"]


@main.command()
@required_url_option
@api_key_option
@backend_option()
def health(url: str, api_key: str | None, backend: str) -> None:
    """Print the server's health (GET /health) as JSON; exit 1 if not ready."""
    if not print_query(url, api_key, backend, "health").ready:
        sys.exit(1)


@main.command()
@required_url_option
@api_key_option
@backend_option()
def props(url: str, api_key: str | None, backend: str) -> None:
    """Print what the server says about itself (GET /props and /slots) as JSON."""
    print_query(url, api_key, backend, "props")


def print_query(url: str, api_key: str | None, backend: str, method: str) -> Any:
    """Call the adapter's *method* on the server, print the answer as JSON (indented on
    a terminal), return it."""
    result = run(call_adapter, url, api_key, method, backend=backend)
    encoded = msgspec.json.encode(result)
    if sys.stdout.isatty():
        encoded = msgspec.json.format(encoded, indent=2)
    click.echo(encoded)
    return result


async def call_adapter(base_url: str, api_key: str | None, method: str) -> Any:
    async with LlamaCppHttpAdapter(base_url, api_key=api_key) as adapter:
        return await getattr(adapter, method)()
