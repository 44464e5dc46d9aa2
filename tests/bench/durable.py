"""The durable floor: the price of the guarantees, paid with nothing else around it.

The same JetStream hops as the platform makes for a chat turn (and for a delegated task) — each
message published with its publish-ack awaited and a `Nats-Msg-Id`, pulled by a durable consumer
(bus.pull, as the actors pull) and acked as the platform acks them (`ack_sync` where the next
message must not see this one, a plain ack elsewhere) — the same PostgreSQL commits (a
single-row INSERT each, on a pool) and `Agent.run` with TestModel, across the same number of
processes, entered over HTTP (uvicorn + Litestar). No schemas, no history, no logging, no
ordering check: the ratio of the platform to this is what its own code costs.

    python -m tests.bench.durable worker PLAN PROCESS   # the steps of PLAN that PROCESS runs
    python -m tests.bench.durable http PLAN PORT        # the entry: POST /go
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from bus.pull import Pull
from tests.bench.harness import CpuMeter, Infra, Latency, Report, Scale, free_port, measure, processes
from tests.bench.raw import raw_connect

__all__ = ["TASK", "TURN", "Floor", "Plan", "Step", "run_floor"]

# One stream per hop, as the platform spreads its messages over several streams (conversation
# commands, executor commands, executor events, run output, conversation and scheduler events):
# with sync_interval always each stream fsyncs its own writes, so one stream for all would make a
# bottleneck the platform does not have.
HOP_NAMES = ("cmd", "run", "finished", "out", "turn", "changed", "done")
HOPS = "floorjs"  # JetStream subjects: floorjs.<plan>.<hop>.<id>; the entry waits on floorjs.<plan>.done.<id>
SERVICES = "floorsvc"  # core request/reply subjects, outside the stream
TABLE = "bench_durable_floor"
MAX_IN_FLIGHT = 64


@dataclass(frozen=True)
class Step:
    """One actor's part: pulled from `consumes` (or answered as the request `name`), then `before`
    commits, `agent` runs, `calls` are requested, one publish per hop in `emits` and in `sinks` (hops
    nobody pulls: run output, events) with the `after` commits alongside, then the ack (or reply)."""

    name: str
    process: str
    consumes: str | None = None  # None: a core request/reply service, not a JetStream hop
    before: int = 0
    agent: bool = False
    calls: tuple[str, ...] = ()
    emits: tuple[str, ...] = ()
    sinks: tuple[str, ...] = ()
    after: int = 0
    sync_ack: bool = False  # ack_sync (the conversation's commands: its ordering check reads the stream)

    @property
    def publishes(self) -> int:
        return len(self.emits) + len(self.sinks)


@dataclass(frozen=True)
class Plan:
    name: str
    entry: str  # the hop the HTTP entry publishes to, or the service it requests
    entry_is_request: bool
    steps: tuple[Step, ...]

    @property
    def processes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.process for s in self.steps))

    def counts(self) -> dict[str, int]:
        """What one unit of work costs in bus and database operations."""
        return {
            "pub-acked publishes": sum(s.publishes for s in self.steps) + (0 if self.entry_is_request else 1),
            "ack_sync": sum(1 for s in self.steps if s.consumes is not None and s.sync_ack),
            "plain acks": sum(1 for s in self.steps if s.consumes is not None and not s.sync_ack),
            "commits": sum(s.before + s.after for s in self.steps),
            "core requests": len([s for s in self.steps for _ in s.calls]) + (1 if self.entry_is_request else 0),
            "Agent.run": sum(1 for s in self.steps if s.agent),
        }


# A non-streamed chat turn, counted from the code (gateway/conversations.py,
# actors/conversation/actor.py, actors/executor/actor.py + agent_run.py, at the commit of this file).
# Nobody streams it, so it publishes no RunAccepted, RunStarted, TextDelta or UsageReported:
#   gateway       publish PostMessage on the conversation's command subject                  1 publish
#   conversation  _post: one transaction (lock, insert turn, next request), then publish
#                 RunRequest (executor command); ack_sync (the ordering check)               1 commit, 1 publish
#   executor      _run: store.begin (1 commit), Agent.run, store.finish (1 commit), then
#                 publish RunFinished (executor event); ack                                  2 commits, 1 publish
#   conversation  _on_run_finished: one transaction (lock, store reply), then publish
#                 TurnCompleted and the run's end on its output (after the commit); ack       1 commit, 2 publishes
#   gateway       TurnCompleted through a core subscription (TurnWaiter)
# = 5 publishes with their acks, 1 ack_sync + 2 acks, 4 commits, 1 Agent.run. Left out as not a
# guarantee's price: the ordering check's direct get per command, and every read.
TURN = Plan(
    name="turn",
    entry="cmd",
    entry_is_request=False,
    steps=(
        Step("accept", "conversation", consumes="cmd", before=1, emits=("run",), sync_ack=True),
        # the commit that stores the run's end comes before its announcement
        Step("run", "executor", consumes="run", before=2, agent=True, emits=("finished",)),
        Step("finish", "conversation", consumes="finished", before=1, emits=("done",), sinks=("out",)),
    ),
)

# A delegated task, counted from the code (gateway/tasks.py, actors/scheduler/actor.py, and the
# turn above, which the scheduler starts as a conversation turn nobody streams):
#   gateway       request scheduler.create (core)
#   scheduler     _create: one transaction (task + run), publish TaskChanged; _start: request
#                 conversation.create (core; 1 commit there), publish PostMessage, mark_started
#                 (1 commit); reply                                                           2 commits, 2 publishes
#   conversation  create: 1 commit. Then the turn's three steps above                         1 + 4 commits, 4 publishes
#   scheduler     _on_finished (its own consumer of RunFinished, beside the conversation's):
#                 finish_run (1 commit), publish TaskRunFinished; ack                          1 commit, 1 publish
#   client        TaskRunFinished through a core subscription
# = 7 publishes with their acks, 1 ack_sync + 3 acks, 8 commits, 2 core requests, 1 Agent.run.
TASK = Plan(
    name="task",
    entry="create",
    entry_is_request=True,
    steps=(
        Step("create", "scheduler", before=1, calls=("conv-create",), emits=("cmd",), sinks=("changed",), after=1),
        Step("conv-create", "conversation", before=1),
        Step("accept", "conversation", consumes="cmd", before=1, emits=("run",), sync_ack=True),
        Step("run", "executor", consumes="run", before=2, agent=True, emits=("finished",)),
        Step("finish", "conversation", consumes="finished", before=1, sinks=("turn", "out")),
        Step("task-finish", "scheduler", consumes="finished", before=1, emits=("done",)),
    ),
)
PLANS = {p.name: p for p in (TURN, TASK)}


def _stream(hop: str) -> str:
    return f"BENCH_DURABLE_{hop.upper()}"


def _durable(plan: Plan, step: Step) -> str:
    return f"durable-{plan.name}-{step.name}"


# --- the processes -------------------------------------------------------------------------------


class _Worker:
    def __init__(self, nc: Client, pool: asyncpg.Pool, plan: Plan, process: str) -> None:
        self.nc = nc
        self.hops = f"{HOPS}.{plan.name}"
        self.plan_name = plan.name
        self.js = nc.jetstream()
        self.pool = pool
        self.agent: Any = None
        if any(s.agent for s in plan.steps if s.process == process):
            # imported only where it runs: the other processes start as fast as they can
            from pydantic_ai import Agent
            from pydantic_ai.models.test import TestModel

            self.agent = Agent(TestModel(), instructions="You are a helpful assistant.")

    async def _commit(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(f"INSERT INTO {TABLE} (body) VALUES ($1)", "hello")

    async def _publish(self, subject: str, msg_id: str) -> None:
        await self.js.publish(subject, b"hello", headers={"Nats-Msg-Id": msg_id})

    async def work(self, step: Step, job: str) -> None:
        for _ in range(step.before):
            await self._commit()
        if step.agent:
            await self.agent.run("hello")
        for call in step.calls:
            await self.nc.request(f"{SERVICES}.{self.plan_name}.{call}", job.encode(), timeout=10)
        sends: list[Awaitable[Any]] = [self._publish(f"{self.hops}.{hop}.{job}", f"{job}:{hop}") for hop in step.emits]
        sends += [
            self._publish(f"{self.hops}.{hop}.{job}", f"{job}:{step.name}:{i}") for i, hop in enumerate(step.sinks)
        ]
        sends += [self._commit() for _ in range(step.after)]
        await asyncio.gather(*sends)

    async def consume(self, plan: Plan, step: Step) -> None:
        assert step.consumes is not None
        pull = Pull(self.nc, stream=_stream(step.consumes), durable=_durable(plan, step))
        await pull.start()
        in_flight: set[asyncio.Task[None]] = set()

        async def handle(msg: Msg) -> None:
            await self.work(step, msg.subject.rsplit(".", 1)[1])
            await (msg.ack_sync() if step.sync_ack else msg.ack())

        while True:
            if len(in_flight) >= MAX_IN_FLIGHT:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            msg = await pull.next(MAX_IN_FLIGHT - len(in_flight))
            if msg is not None:
                task = asyncio.create_task(handle(msg))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)

    async def serve(self, step: Step) -> None:
        async def handle(msg: Msg) -> None:
            await self.work(step, msg.data.decode())
            await msg.respond(b"ok")

        await self.nc.subscribe(f"{SERVICES}.{self.plan_name}.{step.name}", queue=step.name, cb=handle)


async def worker(plan: Plan, process: str) -> None:
    nc = await raw_connect(os.environ["NATS_URL"])
    pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=2, max_size=10)
    w = _Worker(nc, pool, plan, process)
    consumers = []
    for step in plan.steps:
        if step.process != process:
            continue
        if step.consumes is None:
            await w.serve(step)
        else:
            consumers.append(w.consume(plan, step))
    await nc.flush()
    await asyncio.gather(*consumers, asyncio.Event().wait())


def http(plan: Plan, port: int) -> None:
    import uvicorn
    from litestar import Litestar, post

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        nc = await raw_connect(os.environ["NATS_URL"])
        waiting: dict[str, asyncio.Future[None]] = {}

        async def on_done(msg: Msg) -> None:
            future = waiting.pop(msg.subject.rsplit(".", 1)[1], None)
            if future is not None and not future.done():
                future.set_result(None)

        await nc.subscribe(f"{HOPS}.{plan.name}.done.*", cb=on_done)
        state.update(nc=nc, js=nc.jetstream(), waiting=waiting)
        yield
        await nc.drain()

    @post("/go")
    async def go(data: dict[str, str]) -> dict[str, str]:
        job = data["id"]
        if plan.entry_is_request:  # a task: answered once accepted; the client waits for floorjs.done
            await state["nc"].request(f"{SERVICES}.{plan.name}.{plan.entry}", job.encode(), timeout=10)
            return {"id": job}
        done = asyncio.get_running_loop().create_future()
        state["waiting"][job] = done
        await state["js"].publish(
            f"{HOPS}.{plan.name}.{plan.entry}.{job}", b"hello", headers={"Nats-Msg-Id": f"{job}:entry"}
        )
        await asyncio.wait_for(done, 10)
        return {"id": job}

    app = Litestar([go], lifespan=[lifespan])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", log_level="warning")


# --- the measurement -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Floor:
    plan: Plan
    c1: Latency
    c32: Latency
    cpu: CpuMeter

    @property
    def cpu_ms(self) -> float:
        """CPU ms per unit of work in the c=32 phase, all processes together."""
        return self.cpu.per_unit_ms(len(self.c32.samples))

    def report_cpu(self, report: Report, title: str, unit: str) -> None:
        self.cpu.report(report, title, len(self.c32.samples), unit)


async def _prepare(servers: Infra, plan: Plan) -> None:
    conn = await asyncpg.connect(servers.postgres.uri())
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, body text NOT NULL)")
    finally:
        await conn.close()
    nc = await raw_connect(servers.nats.url, servers.credentials)
    js = nc.jetstream()
    for hop in HOP_NAMES:
        config = StreamConfig(
            name=_stream(hop), subjects=[f"{HOPS}.*.{hop}.*"], storage=StorageType.FILE, max_age=600.0
        )
        try:
            await js.add_stream(config)
        except Exception:
            await js.update_stream(config)
    for step in plan.steps:
        if step.consumes is not None:
            await js.add_consumer(
                _stream(step.consumes),
                ConsumerConfig(
                    durable_name=_durable(plan, step),
                    filter_subject=f"{HOPS}.{plan.name}.{step.consumes}.*",
                    ack_policy=AckPolicy.EXPLICIT,
                ),
            )
    await nc.close()


async def run_floor(servers: Infra, logs: Path, scale: Scale, plan: Plan, *, c1: int, c32: int) -> Floor:
    """The plan's floor, `c1` units at c=1 and `c32` at c=32 over HTTP, with the CPU of every
    process in the c=32 phase."""
    await _prepare(servers, plan)
    port = free_port()
    commands = {f"durable-{plan.name}-{p}": ["-m", __name__, "worker", plan.name, p] for p in plan.processes}
    commands[f"durable-{plan.name}-http"] = ["-m", __name__, "http", plan.name, str(port)]
    done: dict[str, asyncio.Future[None]] = {}
    nc = await raw_connect(servers.nats.url, servers.credentials)

    async def on_done(msg: Msg) -> None:
        future = done.pop(msg.subject.rsplit(".", 1)[1], None)
        if future is not None and not future.done():
            future.set_result(None)

    await nc.subscribe(f"{HOPS}.{plan.name}.done.*", cb=on_done)
    counter = 0
    try:
        with processes(commands, servers.env(), logs) as children:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

                async def go(_: int) -> None:
                    nonlocal counter
                    counter += 1
                    job = f"{plan.name}{os.getpid()}n{counter}"
                    finished = done[job] = asyncio.get_running_loop().create_future()
                    (await client.post("/go", json={"id": job})).raise_for_status()
                    if plan.entry_is_request:  # a turn's answer comes after its end; a task's before
                        await asyncio.wait_for(finished, 10)
                    done.pop(job, None)

                deadline = time.monotonic() + 30
                while True:  # until every process is up: the first job goes all the way through
                    try:
                        await asyncio.wait_for(go(0), 5)
                        break
                    except (httpx.HTTPError, TimeoutError):
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
                c1_latency = await measure(go, total=c1, concurrency=1, warmup=scale.warmup)
                cpu = CpuMeter.of(servers, {name: child.pid for name, child in children.items()})
                cpu.start()
                c32_latency = await measure(go, total=c32, concurrency=32, warmup=0)
                cpu.stop()
    finally:
        await nc.close()
    return Floor(plan, c1_latency, c32_latency, cpu)


def main() -> None:
    role, plan = sys.argv[1], PLANS[sys.argv[2]]
    if role == "worker":
        uvloop.run(worker(plan, sys.argv[3]))
    elif role == "http":
        http(plan, int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
