"""How a relay slows down wrong tokens from one address: :class:`TokenThrottle`, the
policy, and :class:`WrongTokens`, the bounded table it keeps. Pure.

Each address has a budget of wrong tokens, refilled at a steady rate (a token bucket,
kept as one time per address, as the generic cell rate algorithm does). A wrong token
within the budget is answered (HTTP 401) at once; past it, the answer waits for the
budget to refill, so one address's answers come at the rate at most, however many
connections it opens at once. A wrong token that would wait longer than the bound is
closed at once with no answer, and spends nothing. A right token never waits.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from .._validate import count, seconds

__all__ = ["TokenThrottle", "WrongTokens", "address_key"]


@dataclass(frozen=True)
class TokenThrottle:
    """How a :class:`Relay` slows down repeated wrong tokens from one address.

    An address may send *burst* wrong tokens at once; after that, its wrong tokens are
    answered at *per_second*, each answer waiting its turn; one that would wait longer
    than *max_wait_s* is closed with no answer. A right token is never slowed. IPv6
    addresses count by their /64 network, which one host usually holds whole.

    Args:
        burst: wrong tokens an address may send before it is slowed.
        per_second: the rate at which its wrong tokens are then answered.
        max_wait_s: the longest an answer waits; past it the connection is closed at
            once, unanswered. It should stay below the relay's handshake timeout.
        max_addresses: addresses remembered; past it, the one slowed least recently is
            forgotten.
    """

    burst: int = 10
    per_second: float = 2.0
    max_wait_s: float = 5.0
    max_addresses: int = 4096

    def __post_init__(self) -> None:
        count("burst", self.burst)
        count("max_addresses", self.max_addresses)
        seconds("per_second", self.per_second, positive=True)
        seconds("max_wait_s", self.max_wait_s)


class WrongTokens:
    """The wrong tokens seen lately, per address: when each may be answered."""

    def __init__(self, throttle: TokenThrottle) -> None:
        self._interval = 1.0 / throttle.per_second
        self._tolerance = (throttle.burst - 1) * self._interval
        self._max_wait_s = throttle.max_wait_s
        self._max_addresses = throttle.max_addresses
        #: Per address, the time at which its budget is whole again.
        self._whole_at: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._whole_at)

    def wrong(self, address: str, now: float) -> float | None:
        """Count a wrong token from *address* at *now*: the seconds its answer must wait,
        or None when it would wait past the bound (close it, unanswered; it is not
        counted)."""
        whole_at = max(self._whole_at.get(address, now), now)
        wait = max(0.0, whole_at - now - self._tolerance)
        if wait > self._max_wait_s:
            return None
        self._whole_at[address] = whole_at + self._interval
        self._whole_at.move_to_end(address)
        self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        """Drop the addresses whose budget is whole again, and the least recently slowed
        past the bound."""
        while self._whole_at:
            address, whole_at = next(iter(self._whole_at.items()))
            if whole_at > now and len(self._whole_at) <= self._max_addresses:
                break
            del self._whole_at[address]


def address_key(host: str) -> str:
    """What a throttle counts an address as: an IPv4 address itself, an IPv6 one by its
    /64 network (an IPv4-mapped one as its IPv4 address), anything else as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
