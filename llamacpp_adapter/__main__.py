"""``python -m llamacpp_adapter``: the same as the ``llamacpp-adapter`` command."""

from ._cli import entry

entry()
