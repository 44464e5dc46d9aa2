"""The one run client, and cancel signals.

`RunClient` is the bus conversation every caller of an executor run shares (pipelines, subagent
hand-offs, research sub-runs, the gateway's pipeline endpoint): publish a RunRequest, wait for its
RunFinished, look a run up, cancel it. `CancelSignals` delivers cancel broadcasts to the work they
name, on whichever replica runs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus import subjects
from bus.client import Bus
from bus.codec import decode
from bus.errors import BusError
from bus.headers import Trace
from bus.streams import EXECUTOR_EVT
from schemas._base import Message
from schemas.errors import ErrorCode
from schemas.runs import CancelRun, GetRun, RunEnd, RunFinished, RunRecord, RunRequest, RunStatus, RunView

__all__ = ["CancelSignals", "RunClient"]

T = TypeVar("T", bound=Message)
EXECUTOR = subjects.ActorName.EXECUTOR
log = structlog.get_logger("runs")


class RunClient:
    """Executor runs over the bus: start one and wait for its end, read its record, cancel it."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def run(
        self, request: RunRequest, trace: Trace, *, resume: bool = False, origin: subjects.RunOrigin | None = None
    ) -> RunEnd:
        """Publish `request` and wait for the run's end (replayed: an end published earlier counts too).

        The publish is deduped by the run id. With `resume` (the caller is re-doing its work after a
        crash), a run the executor has running is not asked for again: its request stays unacked until
        it ends, so it is redelivered if its executor died. An ended one is asked again and answers
        with its recorded end, never running twice. `origin`: the platform starts it for itself (a step,
        a hand-off, a research sub-run: see subjects.RunOrigin), on that origin's own subject.
        """
        run_trace = trace.child(run_id=request.run_id)
        subject = subjects.executor_finished(trace.tenant, request.run_id)
        finished = aiter(self.bus.replay(EXECUTOR_EVT.name, subject, RunFinished))
        try:
            known = await self.record(request.run_id, run_trace) if resume else None
            if known is None or known.status is not RunStatus.RUNNING:
                command = (
                    subjects.executor_command(trace.tenant, request.run_id)
                    if origin is None
                    else subjects.executor_subrun_command(trace.tenant, request.run_id, origin)
                )
                await self.bus.publish(command, request, trace=run_trace, msg_id=request.run_id)
            end: RunEnd = (await anext(finished)).body.result
            return end
        finally:
            await finished.aclose()  # type: ignore[attr-defined]

    async def record(self, run_id: str, trace: Trace) -> RunRecord | None:
        """The executor's record of the run (status `queued` for a turn waiting behind another); None if unknown."""
        try:
            view = await self.bus.request(
                subjects.service(EXECUTOR, "get_run"), GetRun(run_id=run_id), RunView, trace=trace
            )
        except BusError as e:
            if e.code is ErrorCode.NOT_FOUND:
                return None
            raise
        return view.run

    async def cancel(self, run_id: str, trace: Trace, reason: str = "cancelled by request") -> RunRecord:
        """Ask the executor to cancel the run (and the runs under it); a run not seen yet ends cancelled on arrival."""
        cancel = CancelRun(run_id=run_id, reason=reason)
        view = await self.bus.request(subjects.service(EXECUTOR, "cancel"), cancel, RunView, trace=trace)
        return view.run


class CancelSignals(Generic[T]):
    """Cancel broadcasts on `subject` (`...cancel.<tenant>.<id>`), each handed to the work it names if
    this replica runs it. Work registers with `watching` for as long as it runs."""

    def __init__(self, bus: Bus, subject: str, signal: type[T], id_of: Callable[[T], str]) -> None:
        self._bus = bus
        self._subject = subject
        self._signal = signal
        self._id_of = id_of
        self._watched: dict[str, tuple[str, Callable[[T], object]]] = {}  # id -> (tenant, what cancels it)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._bus.nc.subscribe(self._subject, cb=self._on_signal)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    @contextlib.contextmanager
    def watching(self, tenant: str, work_id: str, on_cancel: Callable[[T], object]) -> Iterator[None]:
        self._watched[work_id] = (tenant, on_cancel)
        try:
            yield
        finally:
            self._watched.pop(work_id, None)

    def __contains__(self, work_id: str) -> bool:
        return work_id in self._watched

    async def _on_signal(self, msg: Msg) -> None:
        try:
            signal = decode(msg.data, self._signal)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("undecodable cancel signal", subject=msg.subject)
            return
        watched = self._watched.get(self._id_of(signal))
        if watched is not None and watched[0] == msg.subject.split(".")[-2]:  # the tenant token
            watched[1](signal)
