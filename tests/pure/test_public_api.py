"""The package's public face: what __all__ promises imports, and nothing private leaks."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import llamacpp_adapter

PACKAGE = Path(llamacpp_adapter.__file__).parent


def test_every_name_in_all_imports_from_the_package() -> None:
    for name in llamacpp_adapter.__all__:
        assert getattr(llamacpp_adapter, name) is not None, name


def test_no_private_module_or_name_in_all() -> None:
    for name in llamacpp_adapter.__all__:
        assert not name.startswith("_"), name
        assert not isinstance(getattr(llamacpp_adapter, name), types.ModuleType), name


def test_the_names_the_design_promises_are_public() -> None:
    promised = [
        "SSEDecoder",
        "SSEEvent",
        "TaskRequest",
        "Started",
        "Token",
        "Metrics",
        "End",
        "StreamEvent",
        "WorkerError",
        "AdapterError",
        "PoolUnavailable",
        "DeadlineUnmet",
        "DecodeTimeout",
        "WorkerReset",
        "ProtocolError",
        "EngineError",
        "InternalError",
        "WorkerHealth",
        "WorkerProps",
        "redact_secrets",
        "with_bearer",
        "LlamaCppHttpAdapter",
        "AdapterHost",
        "Relay",
        "open_relay_stream",
    ]
    assert set(promised) <= set(llamacpp_adapter.__all__)


def test_py_typed_ships() -> None:
    assert (PACKAGE / "py.typed").exists()


def test_every_stream_shares_one_receive_interface() -> None:
    from anyio.abc import ObjectReceiveStream

    from llamacpp_adapter import EventReceiveStream, EventStream, HostStream, RelayStream

    for stream in (EventStream, HostStream, RelayStream):
        assert issubclass(stream, EventReceiveStream), stream
        assert issubclass(stream, ObjectReceiveStream), stream  # stands where a channel does
        assert not stream.__abstractmethods__, stream


def test_importing_the_package_loads_neither_the_relay_nor_the_metrics() -> None:
    # A program that only streams (on asyncio, say) need not load wsproto or
    # prometheus_client; the names that need them still import from the package.
    code = (
        "import sys, llamacpp_adapter\n"
        "for name in ('wsproto', 'prometheus_client'):\n"
        "    assert name not in sys.modules, f'{name} was loaded'\n"
        "from llamacpp_adapter import AdapterHost, HostMetrics, HostStream, ReplicaStatus\n"
        "assert 'prometheus_client' in sys.modules\n"
        "assert 'wsproto' not in sys.modules, 'the host loaded wsproto'\n"
        "from llamacpp_adapter import Relay, RelayStream, open_relay_stream\n"
        "assert 'wsproto' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_old_name_still_imports_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="TokenEvent is now StreamEvent"):
        from llamacpp_adapter import TokenEvent
    assert TokenEvent is llamacpp_adapter.StreamEvent
    assert "TokenEvent" not in llamacpp_adapter.__all__


def test_no_text_of_the_package_names_a_version_it_has_not_reached() -> None:
    """A deprecation or change is told against the versions there are (``TokenEvent``
    was said to be the name "before 0.2" in 0.1.0)."""
    own = tuple(int(part) for part in llamacpp_adapter.__version__.split(".")[:2])
    mention = re.compile(r"\b(?:before|since|until|from|in|after) (\d+)\.(\d+)\b")
    ahead = [
        f"{path.relative_to(PACKAGE)}: {match.group(0)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for match in mention.finditer(path.read_text())
        if (int(match.group(1)), int(match.group(2))) > own
    ]
    assert not ahead, ahead


def test_the_api_reference_documents_every_public_name_once() -> None:
    import llamacpp_adapter.bench

    pages = (PACKAGE.parent / "docs" / "api").glob("*.md")
    documented = [
        name for page in pages for name in re.findall(r"^::: (\S+)$", page.read_text(), re.M)
    ]
    public = [f"llamacpp_adapter.{name}" for name in llamacpp_adapter.__all__]
    public += [f"llamacpp_adapter.bench.{name}" for name in llamacpp_adapter.bench.__all__]
    assert sorted(documented) == sorted(public)
