"""A multi-turn run's conversations, read from a file, and its figures by turn: pure."""

from __future__ import annotations

import json
import math
import re

import pytest

from llamacpp_adapter.bench._config import BenchConfig
from llamacpp_adapter.bench._conversations import Conversation, parse_conversations, per_turn
from llamacpp_adapter.bench._load import Load
from llamacpp_adapter.bench._results import make_result, merge_results
from llamacpp_adapter.bench._stats import RequestRecord

SHAREGPT = [
    {
        "id": "a",
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello! (the file's answer: not sent)"},
            {"from": "human", "value": "And then?"},
        ],
    },
    {"conversations": [{"from": "user", "value": "One turn"}]},
]


def test_sharegpt_s_layout_gives_the_user_s_turns() -> None:
    assert parse_conversations(json.dumps(SHAREGPT), "s.json") == [
        Conversation(("Hi", "And then?")),
        Conversation(("One turn",)),
    ]


def test_jsonl_gives_a_conversation_a_line() -> None:
    text = '{"turns": ["a", "b", "c"]}\n\n  {"turns": ["d"]}\n'
    assert parse_conversations(text, "t.jsonl") == [
        Conversation(("a", "b", "c")),
        Conversation(("d",)),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "f: no conversations"),
        ("[{", "f: not JSON"),
        ('{"turns": ["a"]}\n{oops', "f:2: not JSON"),
        ('{"prompt": "a"}', 'f:1: not a {"turns"'),
        ('["a"]', "f: conversation 1: not {"),
        ('{"turns": []}', "f:1: an empty conversation"),
        ('[{"conversations": [{"from": "gpt", "value": "x"}]}]', "f: conversation 1: an empty"),
        ('{"turns": ["a", 3]}', "f:1: turn 2 is not text"),
        ('{"turns": ["a", ""]}', "f:1: turn 2 is not text"),
        (
            '[{"conversations": [{"from": "human", "value": null}]}]',
            "f: conversation 1: turn 1 is not text",
        ),
        (
            '[{"conversations": [{"from": "robot", "value": "x"}]}]',
            'f: conversation 1, message 1: "from"',
        ),
    ],
)
def test_a_malformed_file_is_one_line_saying_where(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(says)) as caught:
        parse_conversations(text, "f")
    assert "\n" not in str(caught.value)


def turn(number: int, ttft: float, cached: int | None, prompt: int = 100) -> RequestRecord:
    return RequestRecord(0.0, 1.0, prompt, 10, ttft, (0.01,), None, number, cached)


def test_each_turn_s_figures_and_the_share_its_cache_spared() -> None:
    records = [
        turn(1, 0.2, 0),
        turn(1, 0.4, 0),
        turn(2, 0.1, 150, 200),
        turn(2, 0.3, None, 200),  # an engine that did not say: not in the share
        RequestRecord(0.0, 0.5, 10, 0, error="WORKER_RESET", turn=2),
        RequestRecord(0.0, 0.5, 10, 3, 0.1),  # not a conversation's
    ]
    rows = per_turn(records)
    assert [row["turn"] for row in rows] == [1, 2]
    assert rows[0]["requests"] == 2
    assert rows[0]["median_ttft_ms"] == pytest.approx(300.0)
    assert rows[0]["cached_share"] == 0
    assert rows[1]["requests"] == 2
    assert rows[1]["cached_share"] == pytest.approx(0.75)
    assert math.isnan(per_turn([turn(1, 0.1, None)])[0]["cached_share"])


def test_a_result_of_conversations_has_its_turns_and_a_merge_keeps_them() -> None:
    made = make_result([turn(1, 0.2, 0), turn(2, 0.1, 80)], 1.0, 0.1, [None], [None], [], [], False)
    result = made.as_json()
    assert [row["turn"] for row in result["turns"]] == [1, 2]
    assert merge_results([result, result])["turns"][1]["requests"] == 2
    plain = make_result(
        [RequestRecord(0.0, 1.0, 5, 5, 0.1)], 1.0, 0.1, [None], [None], [], [], False
    )
    assert "turns" not in plain.as_json()


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"turns": 0}, "at least 1 turn"),
        ({"turns": 2, "turn_tokens": 0}, "at least 1 token"),
        ({"turns": 2, "think_time_s": -1.0}, "think time"),
        ({"turns": 2, "think_time_s": math.inf}, "think time"),
        ({"turns": 2, "conversations_file": "c.jsonl"}, "one of prompts, conversations"),
        ({"prompts_file": "p.jsonl", "conversations_file": "c.jsonl"}, "one of prompts"),
    ],
)
def test_a_bad_conversation_setting_is_refused(fields: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        BenchConfig(("http://x",), Load(concurrency=1), **fields)  # type: ignore[arg-type]
