"""What a new connection per stream costs.

llama-server closes the connection after every streamed response, so the adapter sends a
stream's request with ``Connection: close`` and never keeps that connection: each stream
opens one. This case measures what that costs, on loopback and over TLS, as the
difference between a request on a kept connection and one on a new connection, and sets
it beside what one short stream costs the adapter.

The stub server runs in its own process, pinned to one core; each client runs in a fresh
process pinned to the other, and reports wall time and its own CPU time per request.

    python -m benchmarks.bench_connections   # this case alone
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

from llamacpp_adapter import LlamaCppHttpAdapter

from ._common import (
    CLIENT_CORE,
    SERVER_CORE,
    Table,
    Target,
    pinned,
    request,
    run_client,
    stub_server,
)

STREAM_TOKENS = 100
KEPT = "GET /health, kept connection"
NEW = "GET /health, new connection"
STREAM = f"adapter: a {STREAM_TOKENS}-token stream"
MODES = (KEPT, NEW, STREAM)


def connections(*, quick: bool) -> tuple[Table, list[Target]]:
    requests = 300 if quick else 2000
    table = Table(
        "What a new connection per stream costs (µs per request, client in a fresh process)",
        ["transport", "request", "wall µs", "client CPU µs"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        ca_file, cert_and_key = _certificates(Path(tmp))
        for transport, tls in (("loopback", None), ("TLS", cert_and_key)):
            with pinned(SERVER_CORE), stub_server(tls) as url:
                figures = {mode: _client(url, mode, requests, ca_file) for mode in MODES}
            for mode in MODES:
                table.add(transport, mode, *figures[mode])
            extra_wall = figures[NEW][0] - figures[KEPT][0]
            extra_cpu = figures[NEW][1] - figures[KEPT][1]
            share = 100 * extra_cpu / figures[STREAM][1]
            table.notes.append(
                f"- {transport}: a new connection adds {extra_wall:.0f} µs of wall time and "
                f"{extra_cpu:.0f} µs of client CPU to a request, {share:.0f} % of the "
                f"client CPU of one {STREAM_TOKENS}-token stream."
            )
    table.notes.append(
        f"- {requests} requests per row after 50 not counted; the server on core "
        f"{SERVER_CORE}, each client in a fresh process on core {CLIENT_CORE}."
    )
    return table, []


def _certificates(folder: Path) -> tuple[Path, Path]:
    """A throwaway authority's certificate, and the server's certificate and key."""
    import trustme

    authority = trustme.CA()
    ca_file, cert_and_key = folder / "ca.pem", folder / "server.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(cert_and_key)
    )
    return ca_file, cert_and_key


def _client(url: str, mode: str, requests: int, ca_file: Path) -> tuple[float, float]:
    """Run *mode* in a fresh process on the client's core: (wall µs, CPU µs) a request."""
    wall, cpu = run_client("benchmarks.bench_connections", url, mode, str(requests), str(ca_file))
    return wall, cpu


async def _measure(url: str, mode: str, requests: int, ca_file: str) -> tuple[float, float]:
    import ssl

    verify = ssl.create_default_context(cafile=ca_file)
    async with (
        httpx.AsyncClient(verify=verify) as client,
        LlamaCppHttpAdapter(url, client=client) as adapter,
    ):
        one: Callable[[], Awaitable[object]]
        if mode == STREAM:
            task = request(bench_mode="burst", bench_events=STREAM_TOKENS)

            async def one() -> object:
                async with adapter.submit(task) as events:
                    return [event async for event in events]
        else:
            headers = {"Connection": "close"} if mode == NEW else {}

            async def one() -> object:
                response = await client.get(f"{url}/health", headers=headers)
                return response.raise_for_status()

        for _ in range(50):
            await one()
        cpu, wall = _cpu_s(), time.perf_counter()
        for _ in range(requests):
            await one()
        return (time.perf_counter() - wall) / requests * 1e6, (_cpu_s() - cpu) / requests * 1e6


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    if len(sys.argv) == 5:  # a client process
        url, mode, count, ca = sys.argv[1:]
        print(json.dumps(trio.run(_measure, url, mode, int(count), ca)))
    else:
        print(connections(quick="--quick" in sys.argv)[0].markdown())
