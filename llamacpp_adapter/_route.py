"""Where the engine is: its base URL checked and its credentials taken out of it, and the
route a stream takes there (the direct path, or httpx's where the environment names a
proxy)."""

from __future__ import annotations

import base64
import math
import urllib.request
from dataclasses import dataclass

import httpx

from ._redact import MIN_REGISTERED_SECRET_CHARS, redact_secrets
from ._transports.direct import Endpoint, StreamTimeouts
from .http_util import register_secret

__all__ = ["DirectRoute", "check_base_url", "direct_route", "split_credentials"]


@dataclass(frozen=True)
class DirectRoute:
    """How a stream reaches the server on the direct path."""

    endpoint: Endpoint
    host: str  # the Host header
    path: str  # the base URL's path, before "/completion"
    timeouts: StreamTimeouts


def direct_route(base_url: str, timeouts: httpx.Timeout) -> DirectRoute | None:
    """The direct path to *base_url*, or None where httpx must go (a proxy named by the
    environment, as httpx would use it)."""
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies_environment()
    if (url.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(url.host):
        return None
    tls = httpx.create_ssl_context() if url.scheme == "https" else None
    port = url.port or (443 if url.scheme == "https" else 80)
    return DirectRoute(
        Endpoint(url.host, port, tls),
        url.netloc.decode("ascii"),
        url.raw_path.decode("ascii").rstrip("/"),
        StreamTimeouts(
            connect=_seconds(timeouts.connect),
            write=_seconds(timeouts.write),
            read=_seconds(timeouts.read),
        ),
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
