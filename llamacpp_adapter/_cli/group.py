"""The ``llamacpp-adapter`` command group, and the options its commands share."""

from __future__ import annotations

import click

from .._host.host import ENV_API_KEY

__all__ = [
    "BACKENDS",
    "api_key_option",
    "backend_option",
    "main",
    "required_url_option",
    "url_option",
]

#: The event loops a command can run on.
BACKENDS = ("trio", "asyncio")

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
    type=click.Choice(BACKENDS),
    default="trio",
    show_default=True,
    help="The event loop to run on.",
)


@click.group()
@click.version_option(package_name="llamacpp-adapter")
def main() -> None:
    """Drive llama.cpp's HTTP server: typed, ordered token streams."""
