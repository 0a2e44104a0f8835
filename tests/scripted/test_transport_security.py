"""Transport security: TLS is verified unless the caller brings their own client, and a
redirect never carries the API key to another host."""

from __future__ import annotations

import ssl

import httpx
import pytest
import trustme

from llamacpp_adapter import AdapterError, LlamaCppHttpAdapter, TaskRequest, WorkerReset

from ..support.scripted import Connection, scripted_server, tls_server_context
from ..support.wire import json_response

KEY = "sk-transport-6f0c2a9e41"
HEALTHY = json_response(200, "OK", {"status": "ok"})


async def healthy(connection: Connection) -> None:
    await connection.send(HEALTHY)


async def test_an_untrusted_certificate_is_refused_by_default() -> None:
    authority = trustme.CA()
    async with scripted_server(healthy, ssl_context=tls_server_context(authority)) as server:
        async with LlamaCppHttpAdapter(server.url, api_key=KEY) as adapter:
            with pytest.raises(WorkerReset, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
                await adapter.slots()
        assert not server.requests  # nothing, the key least of all, was sent

        # A caller who trusts the authority brings their own client.
        client_context = ssl.create_default_context()
        authority.configure_trust(client_context)
        async with (
            httpx.AsyncClient(verify=client_context) as client,
            LlamaCppHttpAdapter(server.url, client=client) as adapter,
        ):
            assert (await adapter.health()).ready
        assert server.requests == {"/health": 1}


async def test_a_redirect_is_not_followed_so_the_key_stays_home() -> None:
    async with scripted_server(healthy) as elsewhere:
        port = elsewhere.url.rsplit(":", 1)[1]

        async def redirect(connection: Connection) -> None:
            location = f"Location: http://localhost:{port}/slots\r\n"
            await connection.send(json_response(307, "Temporary Redirect", {}, location))

        async with (
            scripted_server(redirect) as server,
            LlamaCppHttpAdapter(server.url, api_key=KEY) as adapter,
        ):
            with pytest.raises(AdapterError) as info:
                await adapter.slots()
        assert info.value.status == 307
        assert not elsewhere.requests
    assert KEY not in str(info.value)


@pytest.mark.anyio
async def test_https_to_a_plain_http_server_says_so() -> None:
    # llama-server without TLS reads the ClientHello as the start of a request line and
    # never answers it, as the scripted server does: the handshake times out.
    async with scripted_server(healthy) as server:
        url = server.url.replace("http://", "https://")
        timeouts = httpx.Timeout(5.0, connect=0.3)
        async with LlamaCppHttpAdapter(url, timeouts=timeouts) as adapter:
            with pytest.raises(WorkerReset, match=r"TLS handshake.*use an http:// URL"):
                async with adapter.submit(TaskRequest("x")):
                    pass
            health = await adapter.health()
        assert not health.live
        assert health.message is not None
        assert "use an http:// URL" in health.message
        assert not server.requests


@pytest.mark.anyio
async def test_a_connect_timeout_says_what_timed_out() -> None:
    # 192.0.2.1 (TEST-NET-1) is never routed: the SYN goes unanswered, or is refused at
    # once where no route exists; either way the message names no cancel scope.
    timeouts = httpx.Timeout(5.0, connect=0.3)
    async with LlamaCppHttpAdapter("http://192.0.2.1:8080", timeouts=timeouts) as adapter:
        with pytest.raises(WorkerReset) as info:
            async with adapter.submit(TaskRequest("x")):
                pass
    assert "deadline" not in str(info.value)
    assert "cancel" not in str(info.value).lower()
