"""When the serving benchmark sends each request: pure, seeded, no clock.

A closed loop keeps ``concurrency`` requests open (a new one as soon as one ends); an
open loop sends requests at ``rate`` per second whatever the server does, with the gaps
between them drawn as vLLM's benchmark draws them: from a gamma distribution of shape
``burstiness`` and mean ``1 / rate`` (``burstiness`` 1 is a Poisson process; below 1
burstier, above 1 more even), optionally capped at ``concurrency`` open requests.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .._validate import count

__all__ = ["Load", "arrival_offsets"]


@dataclass(frozen=True)
class Load:
    """How requests are sent.

    Attributes:
        concurrency: the most requests open at once (``None``: no cap, open loop only).
        rate: requests per second, an open loop; ``None``: a closed loop.
        burstiness: the gamma shape of the open loop's gaps (1: Poisson).
        seed: the seed of the gaps.
    """

    concurrency: int | None = None
    rate: float | None = None
    burstiness: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rate is None and self.concurrency is None:
            raise ValueError("give a concurrency (a closed loop) or a rate (an open loop)")
        if self.concurrency is not None:
            count("the concurrency", self.concurrency)
        if self.rate is not None and not 0 < self.rate < math.inf:
            raise ValueError("the rate must be a positive, finite number of requests/s")
        if not 0 < self.burstiness < math.inf:
            raise ValueError("the burstiness must be positive and finite")

    @property
    def closed(self) -> bool:
        """Whether this is a closed loop (a number of streams at once), not a rate."""
        return self.rate is None


def arrival_offsets(count: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """When each of *count* requests of an open loop is sent, in seconds from the start:
    the first at 0, then gaps drawn from a gamma distribution of shape *burstiness* and
    mean ``1 / rate``. The same arguments give the same offsets."""
    rng = random.Random(seed)
    scale = 1 / (rate * burstiness)
    offsets: list[float] = []
    now = 0.0
    for _ in range(count):
        offsets.append(now)
        now += rng.gammavariate(burstiness, scale)
    return offsets
