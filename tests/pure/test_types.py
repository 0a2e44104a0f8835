"""TaskRequest validation, its mapping to a /completion body, and the event types."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llamacpp_adapter import End, Metrics, Started, TaskRequest, Token, completion_body

GOLDEN = Path(__file__).parents[1] / "support" / "golden"


def test_defaults_are_greedy_and_send_only_what_is_set() -> None:
    body = completion_body(TaskRequest("hello"))
    assert body == {
        "prompt": "hello",
        "stream": True,
        "return_tokens": True,
        "n_predict": -1,
        "temperature": 0.0,
        "top_p": 1.0,
    }


def test_every_field_is_forwarded() -> None:
    request = TaskRequest(
        "hi",
        max_tokens=16,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        seed=0,
        stop=["\n", "END"],
        extra={"ignore_eos": True, "n_probs": 2},
    )
    body = completion_body(request)
    assert body["n_predict"] == 16
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.9
    assert body["top_k"] == 40
    assert body["seed"] == 0  # zero is a seed, not "unset"
    assert body["stop"] == ["\n", "END"]
    assert body["ignore_eos"] is True
    assert body["n_probs"] == 2


def test_body_of_the_golden_captures_round_trips() -> None:
    # The requests that produced the golden streams, rebuilt from TaskRequest.
    sent = json.loads((GOLDEN / "stop_word.request.json").read_text())
    request = TaskRequest(
        sent["prompt"], max_tokens=sent["n_predict"], seed=sent["seed"], stop=sent["stop"]
    )
    assert completion_body(request) == sent


def test_token_id_prompt() -> None:
    body = completion_body(TaskRequest([1, 300, 301]))
    assert body["prompt"] == [1, 300, 301]
    assert msgspec.json.decode(msgspec.json.encode(body))["prompt"] == [1, 300, 301]


def test_single_stop_string_is_one_stop_string() -> None:
    assert TaskRequest("x", stop="END").stop == ("END",)


def test_messages_need_the_rendered_prompt() -> None:
    request = TaskRequest(messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="rendered prompt"):
        completion_body(request)
    assert completion_body(request, prompt="<|user|>hi")["prompt"] == "<|user|>hi"


def test_job_id_is_generated_and_unique() -> None:
    a, b = TaskRequest("x"), TaskRequest("x")
    assert a.job_id
    assert a.job_id != b.job_id


def test_request_is_frozen_and_copies_its_inputs() -> None:
    extra: dict[str, Any] = {"ignore_eos": True}
    stop = ["a"]
    request = TaskRequest("x", extra=extra, stop=stop)
    extra["ignore_eos"] = False
    stop.append("b")
    assert request.extra["ignore_eos"] is True
    assert request.stop == ("a",)
    with pytest.raises(AttributeError):
        request.max_tokens = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        request.extra["n_probs"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "exactly one of prompt and messages"),
        (
            {"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
            ValueError,
            "exactly one",
        ),
        ({"prompt": b"bytes"}, TypeError, "prompt must be"),
        ({"prompt": [1, -2]}, ValueError, "token ids"),
        ({"prompt": [1, True]}, ValueError, "token ids"),
        ({"messages": []}, ValueError, "must not be empty"),
        ({"messages": "hi"}, TypeError, "sequence of mappings"),
        ({"messages": [{"content": "x"}]}, ValueError, "'role'"),
        ({"prompt": "x", "max_tokens": 0}, ValueError, "max_tokens must be >= 1"),
        ({"prompt": "x", "max_tokens": 2.0}, TypeError, "max_tokens must be an int"),
        ({"prompt": "x", "max_tokens": True}, TypeError, "max_tokens"),
        ({"prompt": "x", "temperature": -0.1}, ValueError, "temperature"),
        ({"prompt": "x", "temperature": math.nan}, ValueError, "temperature"),
        ({"prompt": "x", "temperature": math.inf}, ValueError, "temperature"),
        ({"prompt": "x", "top_p": 1.5}, ValueError, "top_p"),
        ({"prompt": "x", "top_p": "1"}, TypeError, "top_p"),
        ({"prompt": "x", "top_k": -1}, ValueError, "top_k"),
        ({"prompt": "x", "seed": 2**32}, ValueError, "seed"),
        ({"prompt": "x", "seed": -1}, ValueError, "seed"),
        ({"prompt": "x", "stop": [""]}, ValueError, "stop"),
        ({"prompt": "x", "stop": [1]}, ValueError, "stop"),
        ({"prompt": "x", "job_id": ""}, TypeError, "job_id"),
        ({"prompt": "x", "job_id": "a\nb"}, ValueError, "job_id"),
        ({"prompt": "x", "job_id": "j" * 257}, ValueError, "job_id"),
        ({"prompt": "x", "session": 42}, TypeError, "session"),
        ({"prompt": "x", "session": ""}, TypeError, "session"),
        ({"prompt": "x", "session": "s" * 257}, ValueError, "session"),
        ({"prompt": "x", "session": "a\tb"}, ValueError, "session"),
        ({"prompt": "x", "extra": {"stream": False}}, ValueError, "'stream'"),
        ({"prompt": "x", "extra": {"n_predict": 5}}, ValueError, "max_tokens"),
        ({"prompt": "x", "extra": {"seed": 5}}, ValueError, "seed"),
        ({"prompt": "x", "extra": {"f": object()}}, TypeError, "JSON"),
        ({"prompt": "x", "extra": [("a", 1)]}, TypeError, "mapping"),
    ],
)
def test_bad_request_is_refused_with_a_clear_error(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        TaskRequest(**kwargs)


def test_error_messages_never_quote_the_prompt() -> None:
    prompt = "confidential prompt text"
    with pytest.raises(ValueError, match="exactly one") as info:
        TaskRequest(prompt, messages=[{"role": "user", "content": prompt}])
    assert prompt not in str(info.value)


def test_repr_shows_the_size_of_the_prompt_not_the_prompt() -> None:
    request = TaskRequest("a secret plan", job_id="job-1", extra={"ignore_eos": True})
    text = repr(request)
    assert "a secret plan" not in text
    assert "<13 chars>" in text
    assert "job-1" in text
    chat = TaskRequest(messages=[{"role": "user", "content": "private words"}])
    assert "private words" not in repr(chat)
    assert "<1 turns>" in repr(chat)


def test_events_are_frozen_and_compare_by_value() -> None:
    token = Token(0, "a", (1,))
    assert token == Token(i=0, text="a", token_ids=(1,))
    with pytest.raises(AttributeError):
        token.text = "b"  # type: ignore[misc]
    assert repr(token) == "Token(i=0, text='a', token_ids=(1,))"
    assert Started("j").job_id == "j"
    assert End(3, "limit").tokens_in is None
    assert Metrics(1, 1.0, 1.0, 2, 2.0, 1.0).cached_tokens is None


def test_events_support_match_statements() -> None:
    def describe(event: object) -> str:
        match event:
            case Token(i, text):
                return f"{i}:{text}"
            case End(tokens_out, stop_reason):
                return f"end {tokens_out} {stop_reason}"
            case _:
                return "?"

    assert describe(Token(2, "x")) == "2:x"
    assert describe(End(5, "eos")) == "end 5 eos"
