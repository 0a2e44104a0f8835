"""The ``llamacpp-adapter`` command line.

* ``llamacpp-adapter stream "PROMPT"``: stream a completion to the terminal as it comes,
  then a one-line summary. Without ``--url`` it starts a real llama-server with a tiny
  model it writes itself, and stops it afterwards.
* ``llamacpp-adapter health --url URL`` and ``llamacpp-adapter props --url URL``.
* ``llamacpp-adapter relay --url URL``: serve task streams over WebSocket (see
  :class:`Relay`) until interrupted.

The command group and its shared options are in ``group``, how a command runs and stops
in ``running``, the engine it uses in ``engine``, and each command in a module of its own.
"""

from __future__ import annotations

# Each command's module adds it to the group.
from . import benchmark, query, relay, stream  # noqa: F401
from .group import main
from .running import entry

__all__ = ["entry", "main"]
