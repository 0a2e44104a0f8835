"""Secrets through the whole library: an engine's API key and the relay's token, with
DEBUG logging on for this library, httpx and httpcore, never appear in
a log record, an error's message or repr, a formatted traceback, a repr of any public
object, the host's metrics, or a message the relay sends to a client."""

from __future__ import annotations

import logging
import traceback

import prometheus_client
import pytest
import trio

from llamacpp_adapter import (
    AdapterError,
    AdapterHost,
    End,
    LlamaCppHttpAdapter,
    PoolUnavailable,
    Relay,
    RetryPolicy,
    TaskRequest,
    WorkerError,
    open_relay_stream,
)
from llamacpp_adapter._local.server import LocalLlamaServer

from ..conftest import API_KEY

RELAY_TOKEN = "relay-secret-9c2d4e7f1a83"
WRONG_KEY = "wrong-engine-key-3e9a1b7c55"
WRONG_TOKEN = "wrong-relay-token-61f0d2aa"
SECRETS = (API_KEY, WRONG_KEY, RELAY_TOKEN, WRONG_TOKEN)
LOGGERS = ("llamacpp_adapter", "httpx", "httpcore")


def shown(error: BaseException) -> str:
    """All a caller can see of *error*: its text, its repr, its formatted traceback
    with the chain of causes."""
    return "\n".join([str(error), repr(error), *traceback.format_exception(error)])


async def test_no_secret_is_shown_by_the_host_or_the_relay(
    llama_server_with_key: LocalLlamaServer, caplog: pytest.LogCaptureFixture
) -> None:
    for name in LOGGERS:  # caplog puts the levels back after the test
        caplog.set_level(logging.DEBUG, logger=name)
    url = llama_server_with_key.base_url
    seen: list[str] = []  # everything a caller, a relay client or an operator sees
    no_retry = RetryPolicy(max_attempts=1)
    async with (
        AdapterHost(retry=no_retry, slot_wait_s=1.0) as host,
        LlamaCppHttpAdapter(url, api_key=API_KEY) as keyed,
        LlamaCppHttpAdapter(url, api_key=WRONG_KEY) as wrong,
        trio.open_nursery() as nursery,
    ):
        host.bind("keyed", "r0", keyed)
        host.bind("wrong", "r0", wrong)
        await host.wait_ready("keyed")
        relay = Relay(host, pool="keyed", token=RELAY_TOKEN)
        relay_url = await nursery.start(relay.serve)

        # The right token and key: a whole stream through the relay.
        task = TaskRequest("hello", max_tokens=3)
        async with open_relay_stream(relay_url, task, token=RELAY_TOKEN) as events:
            relayed = [event async for event in events]
        assert isinstance(relayed[-1], End)
        seen.extend(repr(event) for event in relayed)

        # A wrong relay token is refused at the handshake.
        with pytest.raises(AdapterError) as refused:
            async with open_relay_stream(relay_url, task, token=WRONG_TOKEN):
                pass
        assert refused.value.status == 401
        seen.append(shown(refused.value))

        # The replica with the wrong key: the engine refuses it, through the host
        # directly and through the relay (whose client gets the error frame's message).
        for attempt in range(2):
            with pytest.raises(WorkerError) as failed:
                if attempt == 0:
                    async with host.submit("wrong", task) as stream:
                        async for _ in stream:
                            pass
                else:
                    async with open_relay_stream(
                        relay_url, task, token=RELAY_TOKEN, pool="wrong"
                    ) as events:
                        async for _ in events:
                            pass
            assert isinstance(failed.value, (AdapterError, PoolUnavailable))
            seen.append(shown(failed.value))

        seen.extend([repr(host), repr(relay), repr(keyed), repr(wrong)])
        seen.extend(repr(status) for pool in ("keyed", "wrong") for status in host.replicas(pool))
        seen.append(prometheus_client.generate_latest(host.metrics.registry).decode())
        nursery.cancel_scope.cancel()

    names = {record.name.split(".")[0] for record in caplog.records}
    assert {"llamacpp_adapter", "httpx", "httpcore"} <= names
    for record in caplog.records:
        seen.append(record.getMessage())
        seen.append(repr(vars(record)))
        if record.exc_info is not None and record.exc_info[1] is not None:
            seen.append(shown(record.exc_info[1]))
    everything = "\n".join(seen)
    for secret in SECRETS:
        assert secret not in everything
