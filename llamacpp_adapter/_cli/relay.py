"""``llamacpp-adapter relay``: task streams served over WebSocket until interrupted."""

from __future__ import annotations

import ssl
from typing import Any

import anyio
import click

from .._adapter import LlamaCppHttpAdapter
from .._relay.server import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    Relay,
    check_token,
    exposed,
)
from .._relay.throttle import TokenThrottle
from .engine import engine_url
from .group import api_key_option, count_option, main, positive_option, url_option
from .running import run

__all__ = ["relay"]

RELAY_TOKEN_VARIABLE = "LLAMACPP_ADAPTER_RELAY_TOKEN"


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
    envvar=RELAY_TOKEN_VARIABLE,
    show_envvar=True,
    help="Bearer token every client must send (better given in the environment).",
)
@count_option(
    "--max-connections",
    default=DEFAULT_MAX_CONNECTIONS,
    help="Connections served at once; more are refused with HTTP 503.",
)
@positive_option(
    "--idle-timeout",
    default=DEFAULT_IDLE_TIMEOUT_S,
    maximum=86400,
    help="Seconds to wait for a client's task, and for a client that stops reading.",
)
@count_option(
    "--wrong-token-burst",
    default=TokenThrottle.burst,
    help="Wrong tokens one address may send before its answers are slowed.",
)
@positive_option(
    "--wrong-token-rate",
    default=TokenThrottle.per_second,
    help="Then, how many of its wrong tokens are answered a second.",
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
    wrong_token_burst: int,
    wrong_token_rate: float,
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
    try:
        check_token(token)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    options: dict[str, Any] = {
        "token": token,
        "max_connections": max_connections,
        "idle_timeout_s": idle_timeout,
        "throttle": TokenThrottle(burst=wrong_token_burst, per_second=wrong_token_rate),
        "allow_extra": allow_extra,
        "allow_anonymous": allow_no_token,
        "ssl_context": None if certfile is None else _server_tls(certfile, keyfile),
    }
    if exposed(listen, token=token is not None):
        if not allow_no_token:
            raise click.UsageError(
                f"--listen {listen} with no token lets anyone who reaches it run tasks: give "
                f"--token (or {RELAY_TOKEN_VARIABLE}), or --allow-no-token"
            )
        click.echo(
            f"-- warning: no token on {listen}: anyone who reaches it may run tasks", err=True
        )
    with engine_url(url) as base_url:
        run(_relay, base_url, api_key, listen, port, options, backend="trio")


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
