"""Secrets never survive redact_secrets, and never appear in an error's str or repr."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Iterator

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from llamacpp_adapter import (
    AdapterError,
    DeadlineUnmet,
    DecodeTimeout,
    EngineError,
    InternalError,
    PoolUnavailable,
    ProtocolError,
    WorkerError,
    WorkerReset,
    _redact,
    redact_secrets,
    register_secret,
    with_bearer,
)
from llamacpp_adapter.http_util import default_client

TOKEN68 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
tokens = st.text(alphabet=TOKEN68, min_size=8, max_size=64)
header_values = st.text(alphabet=TOKEN68 + "!$%()*", min_size=8, max_size=64)
surrounding = st.text(max_size=40)


@pytest.fixture(autouse=True)
def registry_restored() -> Iterator[None]:
    """Forget the secrets a test registers once it ends: the registry is the process's,
    and a registered word would be masked in every later test's messages."""
    before = set(_redact._registered)
    yield
    with _redact._registered_lock:
        _redact._registered.intersection_update(before)


def fingerprint(secret: str) -> str:
    return "****" + hashlib.sha256(secret.encode()).hexdigest()[:6]


CONTEXTS: list[Callable[[str], str]] = [
    lambda s: f"Authorization: Bearer {s}",
    lambda s: f"authorization: bearer {s}\r\nHost: x",
    lambda s: f"Authorization: Basic {s}",
    lambda s: f"Authorization: {s}",
    lambda s: f"{{'authorization': '{s}'}}",
    lambda s: f"X-Api-Key: {s}",
    lambda s: f"x-api-key:{s}",
    lambda s: f"GET /completion?api_key={s}&stream=1",
    lambda s: f"https://host/v1?apikey={s}",
    lambda s: f'{{"api_key": "{s}", "other": 1}}',
    lambda s: f"api-key={s}",
    lambda s: f"access_token={s}",
    lambda s: f"http://user:{s}@127.0.0.1:8080/completion",
]


@pytest.mark.parametrize("context", range(len(CONTEXTS)))
@given(secret=header_values, before=surrounding, after=surrounding)
def test_credential_of_known_shape_never_survives(
    context: int, secret: str, before: str, after: str
) -> None:
    text = before + CONTEXTS[context](secret) + " " + after
    redacted = redact_secrets(text)
    assert secret not in redacted


@given(secret=tokens, before=surrounding, after=surrounding)
@example(secret="00000000", before="BEARER", after="")
def test_bearer_token_is_masked_with_its_fingerprint(secret: str, before: str, after: str) -> None:
    redacted = redact_secrets(f"{before} Bearer {secret} {after}")
    assert secret not in redacted
    assert fingerprint(secret) in redacted


@given(secret=tokens, text=surrounding)
def test_token_seen_as_bearer_is_masked_elsewhere_in_the_text_too(secret: str, text: str) -> None:
    redacted = redact_secrets(f"sent {secret} with Bearer {secret}; {text}")
    assert secret not in redacted


@given(
    secret=st.text(min_size=8, max_size=40).filter(lambda s: s.strip() == s and s.strip()),
    before=surrounding,
    after=surrounding,
)
# Hypothesis draws text from the words of the code under test too: a word of the
# library's own messages, once registered, would be masked in every later test's
# errors, unless the registry is restored (registry_restored).
@example(secret="temperature", before="", after="")
def test_registered_secret_never_survives_anywhere(secret: str, before: str, after: str) -> None:
    register_secret(secret)
    assert secret not in redact_secrets(before + secret + after)
    assert secret not in redact_secrets(secret * 3)


def test_registered_secret_masked_with_its_fingerprint() -> None:
    register_secret("s3cr3t-value-for-tests")
    assert redact_secrets("key s3cr3t-value-for-tests used") == (
        f"key {fingerprint('s3cr3t-value-for-tests')} used"
    )


def test_short_secrets_are_refused_for_registration() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        register_secret("short")


def test_plain_text_is_untouched() -> None:
    text = "request (3002 tokens) exceeds the available context size (256 tokens)"
    assert redact_secrets(text) == text


def test_redaction_is_idempotent() -> None:
    once = redact_secrets("Authorization: Bearer abcdefgh12345678")
    assert redact_secrets(once) == once


ERROR_FACTORIES: list[Callable[[str], WorkerError]] = [
    WorkerError,
    lambda m: AdapterError(m, status=500, error_type=m),
    lambda m: AdapterError(m, status=401),
    PoolUnavailable,
    DeadlineUnmet,
    DecodeTimeout,
    WorkerReset,
    ProtocolError,
    lambda m: EngineError(m, error_type=m, engine_code=500),
    InternalError,
]


@pytest.mark.parametrize("factory", range(len(ERROR_FACTORIES)))
@given(secret=tokens, before=surrounding)
def test_secret_never_in_str_or_repr_of_an_error(factory: int, secret: str, before: str) -> None:
    # A "secret" that spells part of the class name is not a leak.
    assume(secret not in repr(ERROR_FACTORIES[factory]("")))
    for message in (f"{before} Authorization: Bearer {secret}", f"{before}?api_key={secret}"):
        error = ERROR_FACTORIES[factory](message)
        for shown in (str(error), repr(error), str(error.args), error.message):
            assert secret not in shown


@pytest.mark.parametrize("factory", range(len(ERROR_FACTORIES)))
def test_registered_secret_never_in_an_error(factory: int) -> None:
    secret = "registered-secret-in-an-error"
    register_secret(secret)
    error = ERROR_FACTORIES[factory](f"upstream said: {secret}")
    assert secret not in str(error)
    assert secret not in repr(error)


@pytest.mark.parametrize("factory", range(len(ERROR_FACTORIES)))
def test_errors_survive_pickling_whole(factory: int) -> None:
    error = ERROR_FACTORIES[factory]("went wrong")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.__dict__ == error.__dict__
    assert str(copy) == str(error)
    assert copy.retriable == error.retriable


def test_error_codes_are_stable_and_distinct() -> None:
    codes = {
        AdapterError: "ADAPTER_ERROR",
        PoolUnavailable: "POOL_UNAVAILABLE",
        DeadlineUnmet: "DEADLINE_UNMET",
        DecodeTimeout: "DECODE_TIMEOUT",
        WorkerReset: "WORKER_RESET",
        ProtocolError: "PROTOCOL_ERROR",
        EngineError: "ENGINE_ERROR",
        InternalError: "INTERNAL_ERROR",
    }
    for cls, code in codes.items():
        assert issubclass(cls, WorkerError)
        assert cls.code == code


@pytest.mark.parametrize(
    ("status", "retriable"), [(400, False), (404, False), (429, True), (500, True), (503, True)]
)
def test_adapter_error_is_retriable_for_429_and_5xx(status: int, retriable: bool) -> None:
    error = AdapterError("x", status=status)
    assert error.retriable is retriable
    assert error.status == status


def test_with_bearer_adds_the_header_and_replaces_an_old_one() -> None:
    headers = with_bearer(
        {"authorization": "Basic old", "Accept": "text/event-stream"}, "tok-12345678"
    )
    assert headers == {"Accept": "text/event-stream", "Authorization": "Bearer tok-12345678"}
    assert with_bearer({"A": "b"}, None) == {"A": "b"}


@pytest.mark.parametrize("bad", ["", "has space", "line\r\nbreak", "ünïcode"])
def test_with_bearer_refuses_a_bad_token_without_quoting_it(bad: str) -> None:
    with pytest.raises(ValueError, match="token68") as info:
        with_bearer({}, bad)
    if bad:
        assert bad not in str(info.value)


def test_with_bearer_registers_the_token() -> None:
    with_bearer({}, "registered-by-with-bearer")
    assert "registered-by-with-bearer" not in redact_secrets("token registered-by-with-bearer")


async def test_default_client_verifies_tls_and_has_every_timeout() -> None:
    async with default_client() as client:
        timeout = client.timeout
        assert None not in (timeout.connect, timeout.read, timeout.write, timeout.pool)
        assert client.follow_redirects is False
        # httpx keeps the verify setting on its transport's SSL context.
        ssl_context = client._transport._pool._ssl_context  # type: ignore[attr-defined]
        assert ssl_context.verify_mode.name == "CERT_REQUIRED"
        assert ssl_context.check_hostname is True
