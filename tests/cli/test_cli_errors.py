"""Every command-line error, on every subcommand, is one line on stderr with no
traceback: exit 2 for a bad invocation, 1 for a failure. Run as an operator runs it:
the real command, in a subprocess."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamacpp_adapter._local.server import LocalLlamaServer

from ..support.commands import assert_one_line_error, run_command

ENGINE = "{engine}"  # stands for the test engine's URL
HTTPS_ENGINE = "{https_engine}"  # the same, at https://: it speaks plain HTTP
REFUSED = "{refused}"  # a URL where nothing listens
BUSY_PORT = "{busy_port}"  # a port something else listens on
FILE = "{file}"  # a file that is not a certificate
MISSING = "{missing}"  # a path where there is nothing

BAD_INVOCATIONS = [
    # (arguments, exit code, what the line says)
    (["bogus"], 2, "No such command"),
    (["stream"], 2, "give a prompt"),
    (["stream", ""], 2, "the prompt is empty"),
    (["stream", "   \n"], 2, "the prompt is empty"),
    (["stream", "hi", "--prompt-file", FILE], 2, "not both"),
    (["stream", "--prompt-file", MISSING], 2, "--prompt-file"),
    (["stream", "hi", "--max-tokens", "0"], 2, "--max-tokens"),
    (["stream", "hi", "--temperature", "-1"], 2, "--temperature"),
    (["stream", "hi", "--backend", "curio"], 2, "--backend"),
    (["stream", "hi", "--url", "ftp://example"], 1, "http or https"),
    (["stream", "hi", "--url", REFUSED], 1, "WORKER_RESET"),
    (["stream", "hi", "--url", HTTPS_ENGINE], 1, "use an http:// URL"),
    (["health"], 2, "--url"),
    (["props"], 2, "--url"),
    (["props", "--url", REFUSED], 1, "WORKER_RESET"),
    (["relay", "--url", ENGINE, "--listen", "0.0.0.0"], 2, "--allow-no-token"),
    (["relay", "--url", ENGINE, "--token", "short"], 2, "at least 16 characters"),
    (["relay", "--url", ENGINE, "--keyfile", FILE], 2, "--keyfile needs --certfile"),
    (["relay", "--url", ENGINE, "--certfile", FILE], 2, "cannot load the certificate"),
    (["relay", "--url", ENGINE, "--certfile", MISSING], 2, "--certfile"),
    (["relay", "--url", ENGINE, "--port", BUSY_PORT], 1, "Address already in use"),
    (["relay", "--url", ENGINE, "--port", "70000"], 2, "--port"),
    (["relay", "--url", ENGINE, "--idle-timeout", "0"], 2, "--idle-timeout"),
]


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("arguments", "code", "says"), BAD_INVOCATIONS, ids=[" ".join(a) for a, _, _ in BAD_INVOCATIONS]
)
def test_a_bad_invocation_is_one_line_and_an_exit_code(
    arguments: list[str],
    code: int,
    says: str,
    llama_server: LocalLlamaServer,
    busy_port: int,
    tmp_path: Path,
) -> None:
    not_a_certificate = tmp_path / "file.pem"
    not_a_certificate.write_text("not a certificate\n")
    places = {
        ENGINE: llama_server.base_url,
        HTTPS_ENGINE: llama_server.base_url.replace("http://", "https://"),
        REFUSED: f"http://127.0.0.1:{unused_port()}",
        BUSY_PORT: str(busy_port),
        FILE: str(not_a_certificate),
        MISSING: str(tmp_path / "missing.pem"),
    }
    result = run_command(*(places.get(a, a) for a in arguments))
    assert_one_line_error(result, says, code)
