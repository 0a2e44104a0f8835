"""Transport security: TLS is verified unless the caller brings their own client, and a
redirect never carries the API key to another host."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio
import trustme

from llamacpp_adapter import AdapterError, LlamaCppHttpAdapter, WorkerReset

from .stub import json_response, read_request

KEY = "sk-transport-6f0c2a9e41"
HEALTHY = json_response(200, "OK", {"status": "ok"})


async def serve(
    nursery: trio.Nursery,
    answer: Callable[[trio.abc.Stream, str], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[int, list[str]]:
    """Serve *answer* on a free port (over TLS with *ssl_context*); return the port and
    the list of request heads it receives."""
    heads: list[str] = []

    async def handle(stream: trio.SocketStream) -> None:
        wrapped: trio.abc.Stream = stream
        if ssl_context is not None:
            wrapped = trio.SSLStream(stream, ssl_context, server_side=True)
        try:
            async with wrapped:
                path, _ = await read_request(wrapped)  # type: ignore[arg-type]
                heads.append(path)
                await answer(wrapped, path)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a client that refused the certificate hangs up in the handshake

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    return listeners[0].socket.getsockname()[1], heads


async def healthy(stream: trio.abc.Stream, _: str) -> None:
    await stream.send_all(HEALTHY)


async def test_an_untrusted_certificate_is_refused_by_default(nursery: trio.Nursery) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    port, heads = await serve(nursery, healthy, server_context)
    url = f"https://127.0.0.1:{port}"

    async with LlamaCppHttpAdapter(url, api_key=KEY) as adapter:
        with pytest.raises(WorkerReset, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            await adapter.slots()
    assert heads == []  # nothing, the key least of all, was sent

    # A caller who trusts the authority brings their own client.
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    async with (
        httpx.AsyncClient(verify=client_context) as client,
        LlamaCppHttpAdapter(url, client=client) as adapter,
    ):
        assert (await adapter.health()).ready
    assert heads == ["/health"]


async def test_a_redirect_is_not_followed_so_the_key_stays_home(nursery: trio.Nursery) -> None:
    elsewhere_port, elsewhere = await serve(nursery, healthy)

    async def redirect(stream: trio.abc.Stream, _: str) -> None:
        location = f"Location: http://localhost:{elsewhere_port}/slots\r\n"
        await stream.send_all(json_response(307, "Temporary Redirect", {}, location))

    port, _ = await serve(nursery, redirect)
    async with LlamaCppHttpAdapter(f"http://127.0.0.1:{port}", api_key=KEY) as adapter:
        with pytest.raises(AdapterError) as info:
            await adapter.slots()
    assert info.value.status == 307
    assert elsewhere == []
    assert KEY not in str(info.value)
