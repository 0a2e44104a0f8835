"""The watcher of one replica: it learns the replica's slots and context, reads
``/slots`` again while it is healthy, and probes ``/health`` while it is not.

What it finds it tells the :class:`Replica`, whose methods are the only writers of its
state.
"""

from __future__ import annotations

import anyio

from .._exceptions import AdapterError, WorkerError
from .replica import Replica

__all__ = ["ReplicaWatcher"]


class ReplicaWatcher:
    """Watches *replica* from :meth:`run` until :meth:`stop`.

    Args:
        replica: the replica.
        refresh_interval_s: how often a healthy replica's ``/slots`` is read.
        probe_interval_s: how often an unhealthy replica is probed.
        call_timeout_s: the bound on one ``props()``, ``slots()`` or ``health()`` call.
    """

    def __init__(
        self,
        replica: Replica,
        *,
        refresh_interval_s: float,
        probe_interval_s: float,
        call_timeout_s: float,
    ) -> None:
        self.replica = replica
        self._refresh_interval_s = refresh_interval_s
        self._probe_interval_s = probe_interval_s
        self._call_timeout_s = call_timeout_s
        self._scope = anyio.CancelScope()

    def stop(self) -> None:
        self._scope.cancel()

    async def run(self) -> None:
        replica = self.replica
        with self._scope:
            try:
                failure = await self.learn()
                if failure is not None:
                    replica.mark_unhealthy(f"its props could not be read: {failure}")
            finally:
                replica.record_first_look()
            while True:
                interval = self._refresh_interval_s if replica.healthy else self._probe_interval_s
                with anyio.move_on_after(interval) as waited:
                    # Its health changed: start the new interval (a replica just marked
                    # unhealthy gets its first probe one probe interval later).
                    await replica.wait_health_change()
                if not waited.cancelled_caught:
                    continue
                if replica.healthy:
                    await self.refresh()
                else:
                    await self.probe()

    async def learn(self) -> str | None:
        """Read the replica's slots and context; return why not, on failure."""
        with anyio.move_on_after(self._call_timeout_s) as scope:
            try:
                props = await self.replica.adapter.props()
            except WorkerError as exc:
                return exc.code
        if scope.cancelled_caught:
            return "no answer in time"
        self.replica.record_props(props)
        return None

    async def refresh(self) -> None:
        """Read ``/slots`` again: the slots, and how many other clients use."""
        replica = self.replica
        with anyio.move_on_after(self._call_timeout_s):
            try:
                use = await replica.adapter.slot_use()
            except AdapterError as exc:
                if exc.status not in (404, 501):  # 404, 501: no /slots; keep props()'s
                    self._record_failure(exc)
                return
            except WorkerError as exc:
                self._record_failure(exc)
                return
            replica.record_slots(use)

    async def probe(self) -> None:
        """Ask an unhealthy replica's ``/health``; when ready, learn it again."""
        ready = False
        with anyio.move_on_after(self._call_timeout_s):
            ready = (await self.replica.adapter.health()).ready
        if ready and await self.learn() is None:
            self.replica.mark_healthy()

    def _record_failure(self, error: WorkerError) -> None:
        self.replica.record_failure(error, now=anyio.current_time())
