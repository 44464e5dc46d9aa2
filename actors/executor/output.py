"""Publishing one run's output, in order, with token deltas coalesced while a publish is in flight.

Each publish waits for JetStream's ack (the embedded server fsyncs every write), so one message
per token would cap a stream at the disk's write rate. Instead one publisher task per run sends
whatever accumulated while its previous publish was in flight: the first token goes out at
once, and under load consecutive deltas merge into one message. Order is kept because there is
exactly one publisher per run.
"""

from __future__ import annotations

import asyncio

from bus.client import Bus
from bus.headers import Trace
from bus.tasks import cancel_and_wait
from schemas._base import Message
from schemas.runs import TextDelta

__all__ = ["OutputWriter"]


class OutputWriter:
    def __init__(self, bus: Bus, subject: str, trace: Trace) -> None:
        self._bus = bus
        self._subject = subject
        self._trace = trace
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump())
        self.published = 0

    def emit(self, message: Message) -> None:
        """Queue a message; never blocks the agent."""
        if self._task.done():
            self._task.result()  # a failed publisher: surface its error to the run
        self._queue.put_nowait(message)

    async def publish(self, message: Message, *, msg_id: str | None = None) -> None:
        """Flush what is queued, then publish `message` (with a dedupe id) and wait for its ack."""
        await self.flush()
        await self._bus.publish(self._subject, message, trace=self._trace, msg_id=msg_id)
        self.published += 1

    @property
    def failure(self) -> BaseException | None:
        """The publisher's error once it has failed (NATS unreachable past the bus's retries)."""
        if self._task.done() and not self._task.cancelled():
            return self._task.exception()
        return None

    async def flush(self) -> None:
        self._queue.put_nowait(None)
        joined = asyncio.ensure_future(self._queue.join())
        await asyncio.wait({joined, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():  # the publisher failed (NATS unreachable): the run fails with its error
            joined.cancel()
            self._task.result()

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    async def _pump(self) -> None:
        while True:
            item = await self._queue.get()
            done = 1
            try:
                if isinstance(item, TextDelta):
                    parts = [item.text]
                    follower: Message | None = None
                    while not self._queue.empty():  # merge the deltas that queued up meanwhile
                        nxt = self._queue.get_nowait()
                        done += 1
                        if isinstance(nxt, TextDelta):
                            parts.append(nxt.text)
                        else:
                            follower = nxt
                            break
                    await self._send(TextDelta(run_id=item.run_id, text="".join(parts)))
                    if follower is not None:
                        await self._send(follower)
                elif item is not None:
                    await self._send(item)
            finally:
                for _ in range(done):
                    self._queue.task_done()

    async def _send(self, message: Message) -> None:
        await self._bus.publish(self._subject, message, trace=self._trace)
        self.published += 1
