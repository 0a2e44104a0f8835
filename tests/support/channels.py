"""What the task form's tests read from a channel."""

from __future__ import annotations

from collections import defaultdict

from anyio.abc import ObjectReceiveStream

from llamacpp_adapter import JobItem, StreamEvent, WorkerError


async def gather(
    receive: ObjectReceiveStream[JobItem],
) -> dict[str, list[StreamEvent | WorkerError]]:
    """Every item of the channel until its end, by job."""
    by_job: dict[str, list[StreamEvent | WorkerError]] = defaultdict(list)
    async with receive:
        async for job_id, item in receive:
            by_job[job_id].append(item)
    return by_job
