"""Background-work benchmarks, side by side in one run (uvloop everywhere).

- dispatch: a no-op delegated task over HTTP until its completion event, next to the raw
  JetStream path from the same parts (publish -> pull consumer -> ack -> reply) and to ARQ on
  Redis (its default poll_delay of 0.5 s, and 10 ms);
- delegated tasks with the agent call and a signed webhook to an in-process receiver, with one
  and two executor replicas;
- scheduler firing lag with 10,000 active schedules, and the scheduler's idle CPU.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from arq import create_pool
from arq.connections import RedisSettings

from bus import keys, subjects
from bus.client import Bus
from bus.headers import Trace, new_id
from schemas.tasks import CreateTask, TaskRunFinished, TaskType, TaskView
from tests.bench.durable import TASK, run_floor
from tests.bench.harness import (
    LATENCY,
    PLATFORM,
    CpuMeter,
    Infra,
    Latency,
    Report,
    Scale,
    cpu_seconds,
    free_port,
    measure,
    processes,
    services_up,
    wait_http,
)
from tests.bench.raw import raw_connect
from tests.bench.workers import ensure_stream
from tests.receivers import HttpReceiver

TENANT = "bench"


class Completions:
    """Futures by id, resolved by whichever comes first: the wait or the event."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[None]] = {}

    def _future(self, key: str) -> asyncio.Future[None]:
        return self._futures.setdefault(key, asyncio.get_running_loop().create_future())

    def done(self, key: str) -> None:
        future = self._future(key)
        if not future.done():
            future.set_result(None)

    async def wait(self, key: str, timeout: float = 60.0) -> None:
        await asyncio.wait_for(self._future(key), timeout)
        self._futures.pop(key, None)


# --- the platform --------------------------------------------------------------------------------


class _Platform:
    """Every actor and the gateway, started once: dispatch, then delegated tasks with a webhook on
    one executor, then on two (a second executor process joins the running platform)."""

    def __init__(self, infra: Infra, logs: Path, env: dict[str, str], port: int, key: str, scale: Scale) -> None:
        self.infra, self.logs, self.env, self.scale = infra, logs, env, scale
        self.base = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.dispatch: dict[str, Latency] = {}
        self.delegated: dict[int, Latency] = {}
        self.cpu: CpuMeter | None = None

    async def run(self) -> None:
        completions = Completions()
        nc = await raw_connect(self.infra.nats.url, self.infra.credentials)

        async def on_finished(msg: Any) -> None:
            completions.done(msgspec.json.decode(msg.data, type=TaskRunFinished).run.id)

        await nc.subscribe(f"ab.scheduler.evt.{TENANT}.*.completed", cb=on_finished)
        try:
            with processes(PLATFORM, self.env, self.logs) as children:
                await wait_http(f"{self.base}/health", timeout=90, children=children)
                async with httpx.AsyncClient(base_url=self.base, headers=self.headers, timeout=60) as client:
                    await self._dispatch(client, completions, {name: c.pid for name, c in children.items()})
                    self.delegated[1] = await self._delegated(client)
                    with processes({"executor-2": PLATFORM["executor"]}, self.env, self.logs):
                        await services_up(nc, subjects.ActorName.EXECUTOR.value, 2)
                        self.delegated[2] = await self._delegated(client)
        finally:
            await nc.close()

    async def _dispatch(self, client: httpx.AsyncClient, completions: Completions, pids: dict[str, int]) -> None:
        async def dispatch(_: int) -> None:
            r = await client.post("/v1/tasks", json={"task_type": "delegation", "prompt": "no-op"})
            r.raise_for_status()
            await completions.wait(r.json()["last_runs"][0]["id"])

        scale = self.scale
        self.dispatch["c1"] = await measure(dispatch, total=scale.dispatch_c1, concurrency=1, warmup=scale.warmup)
        self.cpu = CpuMeter.of(self.infra, pids)
        self.cpu.start()
        self.dispatch["c32"] = await measure(dispatch, total=scale.dispatch_c32, concurrency=32, warmup=0)
        self.cpu.stop()

    async def _delegated(self, client: httpx.AsyncClient) -> Latency:
        """Delegated tasks whose result goes out as a signed webhook; done when the receiver has it."""
        completions = Completions()
        receiver = HttpReceiver()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await receiver(scope, receive, send)
            if scope["type"] == "http" and receiver.requests:
                completions.done(msgspec.json.decode(receiver.requests[-1].body)["data"]["task_run_id"])

        body = {
            "task_type": "delegation",
            "prompt": "summarize",
            "notification_config": {"channels": ["webhook"], "webhook_url": receiver.url + "/hook"},
        }

        async def delegate(_: int) -> None:
            r = await client.post("/v1/tasks", json=body)
            r.raise_for_status()
            await completions.wait(r.json()["last_runs"][0]["id"])

        async with _serve(app, receiver.port):
            return await measure(delegate, total=self.scale.dispatch_c32, concurrency=32, warmup=self.scale.warmup)


class _serve:
    """An ASGI app on a port, in this event loop."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))

    async def __aenter__(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 (uvicorn offers no event)
            await asyncio.sleep(0.02)

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        await self._task


# --- the baselines -------------------------------------------------------------------------------


async def _raw_jetstream(infra: Infra, logs: Path, scale: Scale) -> dict[str, Latency]:
    nc = await raw_connect(infra.nats.url, infra.credentials)
    js = nc.jetstream()
    await ensure_stream(js)
    completions = Completions()

    async def on_done(msg: Any) -> None:
        completions.done(msg.subject.rsplit(".", 1)[1])

    await nc.subscribe("bench.done.*", cb=on_done)
    out: dict[str, Latency] = {}
    with processes({"jetstream-worker": ["-m", "tests.bench.workers", "jetstream"]}, infra.env(), logs):
        await asyncio.sleep(1.0)

        async def job(_: int) -> None:
            job_id = new_id()
            await js.publish(f"bench.jobs.{job_id}", b"{}")
            await completions.wait(job_id)

        out["c1"] = await measure(job, total=scale.dispatch_c1, concurrency=1, warmup=scale.warmup)
        out["c32"] = await measure(job, total=scale.dispatch_c32, concurrency=32, warmup=0)
    await nc.close()
    return out


async def _arq(infra: Infra, logs: Path, scale: Scale) -> dict[str, Latency]:
    port = free_port()
    redis = await asyncio.create_subprocess_exec(
        *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out: dict[str, Latency] = {}
    try:
        await asyncio.sleep(0.5)
        pool = await create_pool(RedisSettings(port=port))
        for label, poll, total_c1 in (("default", "0.5", scale.arq_default_c1), ("10ms", "0.01", scale.dispatch_c1)):
            env = {**infra.env(), "REDIS_PORT": str(port), "ARQ_POLL_DELAY": poll}
            with processes({f"arq-{label}": ["-m", "arq", "tests.bench.workers.ArqWorker"]}, env, logs):
                await asyncio.sleep(1.5)

                async def job(_: int, poll: float = float(poll)) -> None:
                    queued = await pool.enqueue_job("noop")
                    assert queued is not None
                    await queued.result(timeout=60, poll_delay=min(poll, 0.005))

                out[f"{label} c1"] = await measure(job, total=total_c1, concurrency=1, warmup=2)
                out[f"{label} c32"] = await measure(
                    job, total=scale.dispatch_c32 // (4 if label == "default" else 1), concurrency=32, warmup=0
                )
        await pool.aclose()
    finally:
        redis.terminate()
        await asyncio.wait_for(redis.wait(), 10)
    return out


# --- the scheduler -------------------------------------------------------------------------------


async def _scheduler(
    infra: Infra, logs: Path, env: dict[str, str], scale: Scale
) -> tuple[dict[str, float], Latency | None]:
    """Create rate and idle CPU with `scale.schedules` active schedules, then the firing lag of
    `scale.one_shots` one-shot tasks 20 ms apart."""
    bus = await Bus.connect(infra.bus_config(request_timeout_s=30))
    trace = Trace(tenant=TENANT)
    create = subjects.service(subjects.ActorName.SCHEDULER, "create")
    out: dict[str, float] = {}
    with processes(
        {"scheduler-lag": ["-m", "actors.scheduler"]}, {**env, "AGENTBUS_SCHEDULER_TICK": "1.0"}, logs
    ) as children:
        scheduler = children["scheduler-lag"]
        await services_up(bus.nc, subjects.ActorName.SCHEDULER.value)
        sem = asyncio.Semaphore(64)

        async def schedule(**fields: Any) -> None:
            async with sem:
                cmd = CreateTask(task_id=new_id(), task_type=TaskType.SCHEDULED, prompt="report", **fields)
                await bus.request(create, cmd, TaskView, trace=trace)

        started = time.perf_counter()
        await asyncio.gather(*(schedule(interval_seconds=3600.0) for _ in range(scale.schedules)))
        out["create_per_s"] = scale.schedules / (time.perf_counter() - started)
        before, t0 = cpu_seconds(scheduler.pid), time.perf_counter()
        await asyncio.sleep(scale.idle_s)
        out["idle_cpu_pct"] = 100 * (cpu_seconds(scheduler.pid) - before) / (time.perf_counter() - t0)
        # the first firing after every one-shot is made (they are made at several hundred per s)
        first = datetime.now(UTC) + timedelta(seconds=1.0 + scale.one_shots / 200)
        slots = [first + timedelta(milliseconds=20 * i) for i in range(scale.one_shots)]
        await asyncio.gather(*(schedule(run_at=slot) for slot in slots))
        db = await asyncpg.connect(infra.postgres.uri())
        try:
            deadline = time.monotonic() + (slots[-1] - datetime.now(UTC)).total_seconds() + 10.0
            while True:  # until every one-shot has fired, or 10 s after the last one was due
                lags = await db.fetch(
                    "SELECT extract(epoch FROM created_at - scheduled_for) * 1000 AS ms FROM scheduler.task_runs "
                    "WHERE scheduled_for IS NOT NULL ORDER BY ms"
                )
                if len(lags) >= scale.one_shots or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        finally:
            await db.close()
    await bus.close()
    values = tuple(float(r["ms"]) / 1000 for r in lags)
    out["fired"] = len(values)
    return out, Latency(values, 1.0) if values else None


# --- the report ----------------------------------------------------------------------------------


def _dispatch_rows(
    platform: _Platform, raw: dict[str, Latency], durable: dict[str, Latency], arq: dict[str, Latency]
) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for c in ("c1", "c32"):
        p, r, d = platform.dispatch[c], raw[c], durable[c]
        rows += [
            (
                f"platform: delegated no-op task {c}",
                *p.cells(),
                f"{p.per_s:.0f}",
                f"p50 x{p.p50_ms / r.p50_ms:.1f} raw, x{p.p50_ms / d.p50_ms:.2f} durable; "
                f"per s x{p.per_s / d.per_s:.2f} durable",
            ),
            (f"raw JetStream publish->pull->ack->reply {c}", *r.cells(), f"{r.per_s:.0f}", ""),
            (f"durable floor {c} (the task's hops, acks, commits, Agent.run)", *d.cells(), f"{d.per_s:.0f}", ""),
        ]
    for label, latency in arq.items():
        ratio = platform.dispatch[label.split()[-1]].p50_ms / latency.p50_ms
        rows.append(
            (
                f"ARQ + Redis, poll_delay {label}",
                *latency.cells(),
                f"{latency.per_s:.0f}",
                f"platform/ARQ p50 x{ratio:.2f}",
            )
        )
    return rows


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    port = free_port()
    agents = logs / "agents-background.toml"
    agents.write_text('[agents.assistant]\ninstructions = "You are a helpful assistant."\ntools = []\n')
    env = infra.env(
        AGENTBUS_MODEL="test",
        AGENTBUS_PORT=str(port),
        AGENTBUS_AGENTS_FILE=str(agents),
        AGENTBUS_OUTBOUND_ALLOW="127.0.0.1",
        AGENTBUS_SCHEDULER_TICK="0.05",
    )
    bus = await Bus.connect(infra.bus_config())
    key = await keys.create_key(bus, tenant=TENANT, name="bench")
    await bus.close()

    with report.phase("raw JetStream"):
        raw = await _raw_jetstream(infra, logs, scale)
    with report.phase("durable floor"):
        floor = await run_floor(infra, logs, scale, TASK, c1=scale.dispatch_c1, c32=scale.dispatch_c32)
    durable = {"c1": floor.c1, "c32": floor.c32}
    platform = _Platform(infra, logs, env, port, key, scale)
    with report.phase("platform"):
        await platform.run()
    with report.phase("ARQ"):
        arq = await _arq(infra, logs, scale)
    with report.phase("scheduler"):
        lag, firing = await _scheduler(infra, logs, infra.env(AGENTBUS_LOG_LEVEL="WARNING"), scale)

    report.table(
        "background dispatch (ms; completion observed by its event)",
        ("path", *LATENCY, "per s", "ratio"),
        _dispatch_rows(platform, raw, durable, arq),
    )
    assert platform.cpu is not None
    platform.cpu.report(
        report, f"CPU per delegated no-op task, platform c=32 ({scale.dispatch_c32} tasks)", scale.dispatch_c32, "task"
    )
    floor.report_cpu(report, "CPU per delegated no-op task, durable floor c=32", "task")
    report.table(
        "delegated task + agent + signed webhook to a local receiver, c=32 (ms)",
        ("executors", *LATENCY, "completions/s"),
        [(n, *lat.cells(1), f"{lat.per_s:.0f}") for n, lat in platform.delegated.items()],
    )
    rows: list[tuple[object, ...]] = [
        ("tasks created per s (bus request)", f"{lag['create_per_s']:.0f}"),
        ("idle CPU of the scheduler process (%)", f"{lag['idle_cpu_pct']:.1f}"),
        (f"one-shot firings measured (of {scale.one_shots})", f"{lag['fired']:.0f}"),
    ]
    if firing is not None:
        rows += [(f"firing lag {q} (ms)", cell) for q, cell in zip(LATENCY, firing.cells(1), strict=True)]
    report.table(f"scheduler with {scale.schedules:,} active schedules", ("figure", "value"), rows)

    p1, r1, d1 = platform.dispatch["c1"], raw["c1"], durable["c1"]
    report.target(
        "delegated no-op task c=1 p50",
        f"{p1.p50_ms:.1f} ms = x{p1.p50_ms / r1.p50_ms:.1f} raw JetStream ({r1.p50_ms:.2f} ms), "
        f"x{p1.p50_ms / d1.p50_ms:.2f} the durable floor ({d1.p50_ms:.1f} ms)",
        "<= x6 raw JetStream",
        p1.p50_ms <= 6 * r1.p50_ms,
    )
    p32 = platform.dispatch["c32"]
    report.target(
        "delegated no-op task c=32",
        f"{p32.per_s:.0f} completions/s (durable floor {durable['c32'].per_s:.0f}/s); "
        f"CPU {platform.cpu.per_unit_ms(scale.dispatch_c32):.1f} ms/task "
        f"(durable floor {floor.cpu_ms:.1f})",
        ">= 250/s",
        p32.per_s >= 250,
    )
    one, two = platform.delegated[1].per_s, platform.delegated[2].per_s
    report.target(
        "2 executors vs 1, delegated + webhook c=32",
        f"{two:.0f} vs {one:.0f} completions/s",
        "not slower",
        two >= one,
    )
