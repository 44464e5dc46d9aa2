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
import nats
from arq import create_pool
from arq.connections import RedisSettings

from bus import keys, subjects
from bus.client import Bus
from bus.config import BusConfig
from bus.headers import Trace, new_id
from schemas.tasks import CreateTask, TaskRunFinished, TaskType, TaskView
from tests.bench.harness import Infra, Latency, cpu_seconds, free_port, measure, print_table, processes, wait_http
from tests.bench.workers import ensure_stream
from tests.receivers import HttpReceiver

DISPATCH_C1 = 200
DISPATCH_C32 = 800
ARQ_DEFAULT_C1 = 20  # each takes about half a second
SCHEDULES = 10_000
ONE_SHOTS = 300
TENANT = "bench"
PLATFORM = {
    "conversation": ["-m", "actors.conversation"],
    "executor": ["-m", "actors.executor"],
    "scheduler": ["-m", "actors.scheduler"],
    "trigger": ["-m", "actors.trigger"],
    "notifier": ["-m", "actors.notifier"],
    "gateway": ["-m", "gateway"],
}


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


async def _platform_dispatch(infra: Infra, logs: Path, env: dict[str, str], port: int, key: str) -> dict[str, Latency]:
    completions = Completions()
    nc = await nats.connect(infra.nats.url)

    async def on_finished(msg: Any) -> None:
        event = msgspec.json.decode(msg.data, type=TaskRunFinished)
        completions.done(event.run.id)

    await nc.subscribe(f"ab.scheduler.evt.{TENANT}.*.completed", cb=on_finished)
    out: dict[str, Latency] = {}
    with processes(PLATFORM, env, logs):
        await wait_http(f"http://127.0.0.1:{port}/health", timeout=90)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:

            async def dispatch(_: int) -> None:
                r = await client.post("/v1/tasks", json={"task_type": "delegation", "prompt": "no-op"})
                r.raise_for_status()
                await completions.wait(r.json()["last_runs"][0]["id"])

            out["c1"] = await measure(dispatch, total=DISPATCH_C1, concurrency=1)
            out["c32"] = await measure(dispatch, total=DISPATCH_C32, concurrency=32, warmup=0)
    await nc.close()
    return out


async def _delegated_with_webhook(
    infra: Infra, logs: Path, env: dict[str, str], port: int, key: str
) -> dict[int, Latency]:
    return {n: await _delegated(n, logs, env, port, key) for n in (1, 2)}


async def _delegated(replicas: int, logs: Path, env: dict[str, str], port: int, key: str) -> Latency:
    """Delegated tasks whose result goes out as a signed webhook; done when the receiver has it."""
    commands = dict(PLATFORM)
    if replicas == 2:
        commands["executor-2"] = ["-m", "actors.executor"]
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
    headers = {"Authorization": f"Bearer {key}"}
    async with _serve(app, receiver.port):
        with processes(commands, env, logs):
            await wait_http(f"http://127.0.0.1:{port}/health", timeout=90)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as http:

                async def delegate(_: int) -> None:
                    r = await http.post("/v1/tasks", json=body)
                    r.raise_for_status()
                    await completions.wait(r.json()["last_runs"][0]["id"])

                return await measure(delegate, total=DISPATCH_C32, concurrency=32, warmup=20)


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


async def _raw_jetstream(infra: Infra, logs: Path) -> dict[str, Latency]:
    nc = await nats.connect(infra.nats.url)
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

        out["c1"] = await measure(job, total=DISPATCH_C1, concurrency=1)
        out["c32"] = await measure(job, total=DISPATCH_C32, concurrency=32, warmup=0)
    await nc.close()
    return out


async def _arq(infra: Infra, logs: Path) -> dict[str, Latency]:
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
        for label, poll, total_c1 in (("default", "0.5", ARQ_DEFAULT_C1), ("10ms", "0.01", DISPATCH_C1)):
            env = {**infra.env(), "REDIS_PORT": str(port), "ARQ_POLL_DELAY": poll}
            with processes({f"arq-{label}": ["-m", "arq", "tests.bench.workers.ArqWorker"]}, env, logs):
                await asyncio.sleep(1.5)

                async def job(_: int, poll: float = float(poll)) -> None:
                    queued = await pool.enqueue_job("noop")
                    assert queued is not None
                    await queued.result(timeout=60, poll_delay=min(poll, 0.005))

                out[f"{label} c1"] = await measure(job, total=total_c1, concurrency=1, warmup=2)
                out[f"{label} c32"] = await measure(
                    job, total=DISPATCH_C32 // (4 if label == "default" else 1), concurrency=32, warmup=0
                )
        await pool.aclose()
    finally:
        redis.terminate()
        await asyncio.wait_for(redis.wait(), 10)
    return out


# --- the scheduler -------------------------------------------------------------------------------


async def _scheduler(infra: Infra, logs: Path, env: dict[str, str]) -> dict[str, float]:
    bus = await Bus.connect(BusConfig(servers=(infra.nats.url,), request_timeout_s=30))
    trace = Trace(tenant=TENANT)
    create = subjects.service(subjects.ActorName.SCHEDULER, "create")
    out: dict[str, float] = {}
    with processes({"scheduler-lag": ["-m", "actors.scheduler"]}, {**env, "AGENTBUS_SCHEDULER_TICK": "1.0"}, logs) as (
        scheduler,
    ):
        await asyncio.sleep(2.0)
        sem = asyncio.Semaphore(64)

        async def schedule(**fields: Any) -> None:
            async with sem:
                cmd = CreateTask(task_id=new_id(), task_type=TaskType.SCHEDULED, prompt="report", **fields)
                await bus.request(create, cmd, TaskView, trace=trace)

        started = time.perf_counter()
        await asyncio.gather(*(schedule(interval_seconds=3600.0) for _ in range(SCHEDULES)))
        out["create_per_s"] = SCHEDULES / (time.perf_counter() - started)
        before, t0 = cpu_seconds(scheduler.pid), time.perf_counter()
        await asyncio.sleep(10.0)
        out["idle_cpu_pct"] = 100 * (cpu_seconds(scheduler.pid) - before) / (time.perf_counter() - t0)
        first = datetime.now(UTC) + timedelta(seconds=3)
        slots = [first + timedelta(milliseconds=20 * i) for i in range(ONE_SHOTS)]
        await asyncio.gather(*(schedule(run_at=slot) for slot in slots))
        await asyncio.sleep((slots[-1] - datetime.now(UTC)).total_seconds() + 3.0)
        db = await asyncpg.connect(infra.postgres.uri())
        try:
            lags = await db.fetch(
                "SELECT extract(epoch FROM created_at - scheduled_for) * 1000 AS ms FROM scheduler.task_runs "
                "WHERE scheduled_for IS NOT NULL ORDER BY ms"
            )
        finally:
            await db.close()
    await bus.close()
    values = [float(r["ms"]) for r in lags]
    out["fired"] = len(values)
    out["lag_p50_ms"] = values[len(values) // 2] if values else float("nan")
    out["lag_p99_ms"] = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))] if values else float("nan")
    return out


# --- the report ----------------------------------------------------------------------------------


async def run(infra: Infra, logs: Path) -> None:
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
    bus = await Bus.connect(BusConfig(servers=(infra.nats.url,)))
    key = await keys.create_key(bus, tenant=TENANT, name="bench")
    await bus.close()

    raw = await _raw_jetstream(infra, logs)
    platform = await _platform_dispatch(infra, logs, env, port, key)
    arq = await _arq(infra, logs)
    delegated = await _delegated_with_webhook(infra, logs, env, port, key)
    lag = await _scheduler(infra, logs, infra.env(AGENTBUS_LOG_LEVEL="WARNING"))

    rows: list[tuple[object, ...]] = []
    for c in ("c1", "c32"):
        p, r = platform[c], raw[c]
        rows.append(
            (
                f"platform: delegated no-op task {c}",
                f"{p.p50_ms:.2f}",
                f"{p.p99_ms:.2f}",
                f"{p.per_s:.0f}",
                f"p50 x{p.p50_ms / r.p50_ms:.1f}  p99 x{p.p99_ms / r.p99_ms:.1f}",
            )
        )
        rows.append(
            (f"raw JetStream publish->pull->ack->reply {c}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.per_s:.0f}", "")
        )
    for label, latency in arq.items():
        rows.append(
            (
                f"ARQ + Redis, poll_delay {label}",
                f"{latency.p50_ms:.2f}",
                f"{latency.p99_ms:.2f}",
                f"{latency.per_s:.0f}",
                f"platform/ARQ p50 x{platform[label.split()[-1]].p50_ms / latency.p50_ms:.2f}",
            )
        )
    print_table(
        "background dispatch (ms; completion observed by its event)", ("path", "p50", "p99", "per s", "ratio"), rows
    )
    print_table(
        "delegated task + agent + signed webhook to a local receiver, c=32 (ms)",
        ("executors", "p50", "p99", "completions/s"),
        [(n, f"{lat.p50_ms:.1f}", f"{lat.p99_ms:.1f}", f"{lat.per_s:.0f}") for n, lat in delegated.items()],
    )
    print_table(
        f"scheduler with {SCHEDULES:,} active schedules",
        ("figure", "value"),
        [
            ("tasks created per s (bus request)", f"{lag['create_per_s']:.0f}"),
            ("idle CPU of the scheduler process (%)", f"{lag['idle_cpu_pct']:.1f}"),
            (f"one-shot firings measured (of {ONE_SHOTS})", f"{lag['fired']:.0f}"),
            ("firing lag p50 (ms)", f"{lag['lag_p50_ms']:.1f}"),
            ("firing lag p99 (ms)", f"{lag['lag_p99_ms']:.1f}"),
        ],
    )
