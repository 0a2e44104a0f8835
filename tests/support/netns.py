"""A slow link made for a test: a network namespace joined to this one by a veth pair,
with a token-bucket rate limit (``tc ... tbf``) on each end, so that a llama-server in
the namespace is reached at the link's rate both ways. The link can be cut (its end here
set down): then it carries no byte, and no connection over it is reset.

Making one needs root and iproute2 (``ip``, ``tc``); :func:`can_make_links` says why
not, where they are missing, and the tests skip with that reason.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType

_NUMBERS = itertools.count()


def _ip(*args: str, namespace: str | None = None) -> None:
    prefix = [] if namespace is None else ["ip", "netns", "exec", namespace]
    subprocess.run([*prefix, *args], check=True, capture_output=True)


@functools.cache
def can_make_links() -> str | None:
    """None when a link can be made here; else why not."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"lcaprobe{os.getpid()}"
    try:
        _ip("ip", "netns", "add", name)
    except subprocess.CalledProcessError as exc:
        return f"a network namespace cannot be made: {exc.stderr.decode().strip()}"
    _ip("ip", "netns", "del", name)
    return None


class SlowLink:
    """A namespace at the other end of a link of *rate* (tc's units: ``64kbit``,
    ``1mbit``); :attr:`address` is its address, :attr:`launcher` the command that runs
    a program there (``LocalLlamaServer(host=link.address, launcher=link.launcher)``).

    Use it as a context manager; leaving it deletes the namespace and both ends of the
    link.
    """

    def __init__(self, rate: str) -> None:
        number = next(_NUMBERS)
        tag = f"{os.getpid() % 100_000}x{number}"
        self.namespace = f"lcans{tag}"
        self._here = f"lcah{tag}"  # at most 15 characters: an interface's name
        self._there = f"lcat{tag}"
        # A /30 of 10.213.0.0/16 for each link this process makes (64 of them), unlikely
        # to meet another run's: the process id picks the third octet.
        network = f"10.213.{os.getpid() % 256}"
        self._local = f"{network}.{number % 64 * 4 + 1}"
        self.address = f"{network}.{number % 64 * 4 + 2}"
        self._rate = rate

    @property
    def launcher(self) -> Sequence[str]:
        return ["ip", "netns", "exec", self.namespace]

    def __enter__(self) -> SlowLink:
        _ip("ip", "netns", "add", self.namespace)
        try:
            _ip("ip", "link", "add", self._here, "type", "veth", "peer", "name", self._there)
            _ip("ip", "link", "set", self._there, "netns", self.namespace)
            _ip("ip", "addr", "add", f"{self._local}/30", "dev", self._here)
            _ip("ip", "link", "set", self._here, "up")
            there = self.namespace
            _ip("ip", "addr", "add", f"{self.address}/30", "dev", self._there, namespace=there)
            _ip("ip", "link", "set", self._there, "up", namespace=there)
            _ip("ip", "link", "set", "lo", "up", namespace=there)
            for device, namespace in ((self._here, None), (self._there, there)):
                _ip(
                    "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", self._rate,
                    "burst", "4kb", "latency", "1s", namespace=namespace,
                )  # fmt: skip
        except BaseException:
            self._delete()
            raise
        return self

    def cut(self) -> None:
        """Stop the link carrying bytes, both ways, with no reset."""
        _ip("ip", "link", "set", self._here, "down")

    def _delete(self) -> None:
        # Deleting the namespace deletes its end of the pair, and with it this one.
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self._here], capture_output=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._delete()
