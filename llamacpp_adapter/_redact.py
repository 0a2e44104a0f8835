"""Masking of secrets in text that may reach a log line, an exception or a repr.

A secret is replaced by ``****`` followed by the first six hex digits of its SHA-256, so
an operator can tell two tokens apart without seeing either. Secrets are found in two
ways: by shape (a bearer token, an ``Authorization`` header, an API-key header, query
parameter or JSON field, the password of a URL) and by value (every secret registered
with :func:`register_secret`, which the adapter does for the API key it is given).
"""

from __future__ import annotations

import hashlib
import re
import threading

__all__ = ["MIN_REGISTERED_SECRET_CHARS", "redact_secrets", "register_secret", "secret_mask"]

#: Registered secrets shorter than this are refused: masking every occurrence of a short
#: string would mangle ordinary text, and would not hide anything worth hiding.
MIN_REGISTERED_SECRET_CHARS = 8

_MASK_PREFIX = "****"
_FINGERPRINT_HEX_DIGITS = 6

_registered: set[str] = set()
_registered_lock = threading.Lock()

# Credentials by shape. Each pattern's group "secret" is what gets masked. No pattern
# asks for a word boundary before its keyword: masking too much is the safe mistake.
_VALUE = r"[^\s\"'&,;<>]+"
_AUTH_SCHEMES = r"(?:basic|bearer|digest|token|apikey|negotiate|ntlm|hoba|mutual|aws4-hmac-sha256)"
_PATTERNS: tuple[re.Pattern[str], ...] = (
    # "Bearer <token>" anywhere, including inside an Authorization header; the whole
    # value, even where it is not a valid token68. A scheme word said twice ("BEARER
    # Bearer <token>") is not the token.
    re.compile(rf"(?i)bearer(?:[ \t]+bearer)*[ \t]+(?P<secret>{_VALUE})"),
    # "Authorization: <scheme> <credentials>" or "Authorization: <credentials>".
    re.compile(
        rf"(?i)(?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*[\"']?"
        rf"(?:{_AUTH_SCHEMES}[ \t]+)?(?P<secret>{_VALUE})"
    ),
    # API keys as headers ("X-Api-Key: v"), query parameters ("api_key=v") or JSON
    # fields ('"api-key": "v"').
    re.compile(
        rf"(?i)(?:x-api-key|api[-_]?key|access[-_]token)[\"']?[ \t]*[:=][ \t]*[\"']?"
        rf"(?P<secret>{_VALUE})"
    ),
    # The password in "scheme://user:password@host" (up to the "@", even past a "/"
    # that a well-formed URL would have escaped).
    re.compile(r"(?i)[a-z][a-z0-9+.\-]*://[^\s/:@]*:(?P<secret>[^\s@]+)@"),
)


def secret_mask(secret: str) -> str:
    """Return the mask that stands for *secret*: ``****`` plus a six-hex fingerprint."""
    digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
    return _MASK_PREFIX + digest[:_FINGERPRINT_HEX_DIGITS]


def register_secret(secret: str) -> None:
    """Mask every later occurrence of *secret* in :func:`redact_secrets`'s output.

    Raises:
        ValueError: if *secret* is shorter than :data:`MIN_REGISTERED_SECRET_CHARS`
            characters (the message does not repeat it).
    """
    if not isinstance(secret, str):
        raise TypeError("a secret must be a str")
    if len(secret) < MIN_REGISTERED_SECRET_CHARS:
        raise ValueError(
            f"a registered secret must have at least {MIN_REGISTERED_SECRET_CHARS} characters"
        )
    with _registered_lock:
        _registered.add(secret)


def redact_secrets(text: str) -> str:
    """Return *text* with every secret it holds replaced by its mask.

    Credentials found by shape are masked where they stand and, when at least
    :data:`MIN_REGISTERED_SECRET_CHARS` long, wherever else they occur in *text*.
    Registered secrets are masked wherever they occur.
    """
    with _registered_lock:
        known = set(_registered)
    found: set[str] = set()
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: _mask_match(m, found), text)
    known.update(s for s in found if len(s) >= MIN_REGISTERED_SECRET_CHARS)

    # Longest first, so that a secret containing another is masked whole.
    ordered = sorted(known, key=len, reverse=True)
    for secret in ordered:
        if secret in text:
            text = text.replace(secret, secret_mask(secret))
    # A mask, or a mask and its neighbours, could in principle spell a secret again.
    # Deleting until none is left always ends: each pass makes the text shorter.
    for secret in ordered:
        while secret in text:
            text = text.replace(secret, "")
    return text


_MASK = re.compile(rf"\*{{4}}[0-9a-f]{{{_FINGERPRINT_HEX_DIGITS}}}")


def _mask_match(match: re.Match[str], found: set[str]) -> str:
    secret = match.group("secret")
    if _MASK.fullmatch(secret):
        return match.group(0)  # already masked
    found.add(secret)
    start, end = match.span("secret")
    whole = match.group(0)
    offset = match.start(0)
    return whole[: start - offset] + secret_mask(secret) + whole[end - offset :]
