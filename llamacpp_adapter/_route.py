"""Where the engine is: its base URL checked and its credentials taken out of it, and the
route every request takes there: through the proxy the environment names for it (by the
standard library's rules, decided once, and given to httpx to apply), or, where there is
none, straight to it (a stream on the direct path)."""

from __future__ import annotations

import base64
import math
import ssl
import urllib.request
from dataclasses import dataclass

import httpx

from ._redact import MIN_REGISTERED_SECRET_CHARS, redact_secrets
from ._transports.direct import DEFAULT_MAX_CONNECTING, ConnectGate, Endpoint, StreamTimeouts
from .http_util import register_secret

__all__ = ["DirectRoute", "Route", "check_base_url", "engine_route", "split_credentials"]


@dataclass(frozen=True)
class DirectRoute:
    """How a stream reaches the server on the direct path."""

    endpoint: Endpoint
    host: str  # the Host header
    path: str  # the base URL's path, before "/completion"
    timeouts: StreamTimeouts
    gate: ConnectGate  # the connections being made at once


@dataclass(frozen=True)
class Route:
    """The one route every request to the engine takes.

    Attributes:
        proxy: the proxy the environment names for the engine, or None.
        tls: the TLS context for an ``https`` engine (certificates verified, with
            ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` where set), or None.
        direct: how a stream reaches the engine with no proxy; None through one.
    """

    proxy: str | None
    tls: ssl.SSLContext | None
    direct: DirectRoute | None


def engine_route(
    base_url: str, timeouts: httpx.Timeout, max_connecting: int = DEFAULT_MAX_CONNECTING
) -> Route:
    """The route to *base_url*: the environment's proxy for its scheme (``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``ALL_PROXY``) unless ``NO_PROXY`` exempts its host, by the
    standard library's rules; on the direct path, at most *max_connecting* connections
    being made at once."""
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies_environment()
    proxy = None
    if not urllib.request.proxy_bypass(url.host):
        proxy = proxies.get(url.scheme) or proxies.get("all")
    tls = httpx.create_ssl_context() if url.scheme == "https" else None
    direct = None if proxy is not None else _direct(url, tls, timeouts, max_connecting)
    return Route(proxy, tls, direct)


def _direct(
    url: httpx.URL, tls: ssl.SSLContext | None, timeouts: httpx.Timeout, max_connecting: int
) -> DirectRoute:
    port = url.port or (443 if url.scheme == "https" else 80)
    return DirectRoute(
        Endpoint(url.host, port, tls),
        url.netloc.decode("ascii"),
        url.raw_path.decode("ascii").rstrip("/"),
        StreamTimeouts(
            connect=_seconds(timeouts.connect),
            write=_seconds(timeouts.write),
            read=_seconds(timeouts.read),
            pool=_seconds(timeouts.pool),
        ),
        ConnectGate(max_connecting),
    )


def _seconds(value: float | None) -> float:
    return math.inf if value is None else value


def split_credentials(base_url: str) -> tuple[str, str | None]:
    """*base_url* without its user and password, and those as a Basic ``Authorization``
    value (None when it has none). httpx would send them the same way, but it would
    also write the URL, password and all, into its log lines."""
    url = httpx.URL(base_url)
    if not url.userinfo:
        return base_url, None
    credentials = base64.b64encode(url.userinfo).decode("ascii")
    password = url.password
    if password and len(password) >= MIN_REGISTERED_SECRET_CHARS:
        register_secret(password)
    return str(url.copy_with(userinfo=b"")), f"Basic {credentials}"


def check_base_url(base_url: str) -> str:
    if not isinstance(base_url, str):
        raise TypeError("base_url must be a str")
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"base_url is not a valid URL: {redact_secrets(base_url)!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http or https URL: {redact_secrets(base_url)!r}")
    if url.query or url.fragment:
        raise ValueError("base_url must have no query or fragment")
    return base_url.rstrip("/")
