"""A run's result: :class:`BenchResult`, made from its requests' records, the client's
CPU and the servers' view; and one result merged from the results of runs made at the
same time in several processes or on several machines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ._audit import CORE_SHARE_LIMIT, ClientTimes, audit, merge_audits
from ._conversations import per_turn
from ._server_view import counter_growth, server_view, token_check
from ._slo import DEFAULT_ATTAINMENT, Objective, judge, parse_objectives
from ._stats import RequestRecord, cached_share, summarize

__all__ = ["BenchResult", "make_result", "merge_results"]


@dataclass
class BenchResult:
    """A run's result: ``figures`` by vLLM's names, and what none of them reports."""

    figures: dict[str, Any]
    client: dict[str, float]
    server: dict[str, Any]
    token_check: dict[str, Any]
    partial: bool = False
    warnings: list[str] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    #: When the measured part began (seconds since the epoch); the records' times are
    #: seconds from then.
    started_at: float = 0.0
    #: Tokens the warm-up generated (the server counts them too).
    warmup_output_tokens: int = 0
    #: How the run did against its service level objectives (``judge``), when given.
    slo: dict[str, Any] | None = None
    #: The figures of each turn, in a run of conversations (``per_turn``).
    turns: list[dict[str, float | int]] | None = None
    #: Whether the client limited the run (``_audit.audit``).
    audit: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """Every figure, and each request's record (for :func:`merge_results`)."""
        return {
            "partial": self.partial,
            **self.figures,
            "client": self.client,
            "server": self.server,
            "token_check": self.token_check,
            "warnings": self.warnings,
            "started_at": self.started_at,
            "warmup_output_tokens": self.warmup_output_tokens,
            **({} if self.slo is None else {"slo": self.slo}),
            **({} if self.turns is None else {"turns": self.turns}),
            **({} if self.audit is None else {"audit": self.audit}),
            "requests": [msgspec.to_builtins(record) for record in self.records],
        }


def make_result(
    records: list[RequestRecord],
    wall: float,
    cpu: float,
    before: list[float | None],
    after: list[float | None],
    slots: list[tuple[float, int]],
    deferred: list[float],
    unfinished: bool,
    objectives: tuple[Objective, ...] = (),
    attainment: float = DEFAULT_ATTAINMENT,
    times: ClientTimes | None = None,
) -> BenchResult:
    """The result of a run; *unfinished*: requests were open when it ended (cut short,
    or at the end of its duration), so that the server counted tokens the client did not
    record; judged against *objectives* when there are any, and audited with what the
    client saw of itself (*times*) when given."""
    figures = summarize(records, wall)
    output = int(figures["total_output_tokens"])  # type: ignore[arg-type]
    share = cpu / wall if wall > 0 else math.nan
    client = {
        "cpu_seconds": cpu,
        "cpu_seconds_per_1k_tokens": cpu * 1000 / output if output else math.nan,
        "core_share": share,
    }
    server_tokens = counter_growth(before, after)
    server = server_view(server_tokens, slots, deferred)
    # Of the prompts' tokens, those the engine took from its cache (as it said).
    server["prompt_cached_share"] = cached_share(records)
    check = token_check(output, server_tokens, unfinished=unfinished)
    warnings = []
    if share > CORE_SHARE_LIMIT and times is None:
        warnings.append(
            f"the client used {share:.0%} of a core: near saturation, the figures describe "
            "the client as much as the server (try --workers, or fewer streams)"
        )
    if server_tokens is not None and server_tokens != output and not unfinished:
        warnings.append(
            f"the client counted {output} tokens, the server {server_tokens} (another "
            "client may be using it)"
        )
    result = BenchResult(figures, client, server, check, False, warnings, records)
    if objectives:
        result.slo = judge(records, objectives, wall, attainment=attainment)
    if any(record.turn is not None for record in records):
        result.turns = per_turn(records)
    if times is not None:
        result.audit = audit(
            loop_lags_s=times.loop_lags,
            core_share=share,
            planned_s=times.planned,
            sent_s=times.sent,
        )
        _say_limited(result)
    return result


def _say_limited(result: BenchResult) -> None:
    assert result.audit is not None
    if result.audit["limited_by_client"]:
        result.warnings.append(
            "limited by the client: " + "; ".join(result.audit["reasons"]) + " (the figures "
            "describe the client as much as the server: try --workers, or less load)"
        )


def merge_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from the results (``as_json()``) of runs at the same time, in several
    processes or on several machines: the figures are computed again from every
    request's record, on the wall clock (the runs' clocks should agree to well under a
    request's latency). The client's CPU adds up; the server's view and the token check
    are unknown (each run saw the server's counters over its own window), unless the
    caller measured them over the whole."""
    if not results:
        raise ValueError("nothing to merge")
    start = min(float(r["started_at"]) for r in results)
    end = max(float(r["started_at"]) + float(r["duration"]) for r in results)
    records: list[RequestRecord] = []
    for result in results:
        shift = float(result["started_at"]) - start
        for raw in result["requests"]:
            record = msgspec.convert(raw, RequestRecord)
            first = None if record.first_token is None else record.first_token + shift
            records.append(
                msgspec.structs.replace(
                    record, sent=record.sent + shift, ended=record.ended + shift, first_token=first
                )
            )
    cpu = sum(float(r["client"]["cpu_seconds"]) for r in results)
    slo = results[0].get("slo")
    objectives: tuple[Objective, ...] = ()
    attainment = DEFAULT_ATTAINMENT
    if slo is not None:  # judged again over every request
        objectives = parse_objectives(slo["objectives"])
        attainment = float(slo["attainment"])
    merged = make_result(
        records, end - start, cpu, [None], [None], [], [], False, objectives, attainment
    )
    # A core's share is each process's own: the busiest one's, not the sum's.
    merged.client["core_share"] = max(float(r["client"]["core_share"]) for r in results)
    merged.client["processes"] = float(len(results))
    merged.partial = any(r["partial"] for r in results)
    merged.started_at = start
    merged.warnings = [
        w for r in results for w in r["warnings"] if "counted" not in w and "limited" not in w
    ]
    audits = [r["audit"] for r in results if "audit" in r]
    if audits:
        merged.audit = merge_audits(audits)
        _say_limited(merged)
    return merged.as_json()
