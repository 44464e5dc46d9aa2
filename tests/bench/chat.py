"""Chat-turn benchmark: the whole platform next to the floor built from the same parts, in one run.

platform: HTTP -> gateway -> conversation -> executor (pydantic-ai TestModel) -> back, with the
platform's real Postgres writes, each actor and the gateway its own process.
floor:    bare HTTP -> NATS -> process -> NATS -> process -> back (tests/bench/floor.py)
          + in-process Agent.run with the same model + one single-row INSERT per synchronous
          commit the platform makes on a turn (measured from pg_stat_database).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import httpx
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from actors.executor.store import RunStore
from bus import keys, tenants
from bus.client import Bus
from schemas.tenants import Budgets, TenantSettings
from tests.bench.durable import TURN, Floor, run_floor
from tests.bench.harness import (
    LATENCY,
    CpuMeter,
    Infra,
    Latency,
    Report,
    Scale,
    free_port,
    measure,
    processes,
    wait_http,
)

CHAT_ACTORS = ("conversation", "executor")
STREAM_AGENT = "timed"
BUDGETED = "bench-budget"  # a tenant with a token budget: each of its runs reads its spend before it starts


async def _floor_http(infra: Infra, logs: Path, scale: Scale) -> dict[int, Latency]:
    port = free_port()
    commands = {
        "floor-echo": ["-m", "tests.bench.floor", "echo"],
        "floor-relay": ["-m", "tests.bench.floor", "relay"],
        "floor-http": ["-m", "tests.bench.floor", "http", str(port)],
    }
    results: dict[int, Latency] = {}
    with processes(commands, infra.env(), logs):
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    (await client.post("/turn", json={"message": "hi"})).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)

            async def turn(_: int) -> None:
                (await client.post("/turn", json={"message": "hello"})).raise_for_status()

            results[1] = await measure(turn, total=scale.turns_c1, concurrency=1, warmup=scale.warmup)
            results[32] = await measure(turn, total=scale.turns_c32, concurrency=32, warmup=scale.warmup)
    return results


async def _agent_run(scale: Scale) -> Latency:
    agent = Agent(TestModel(), instructions="You are a helpful assistant.")

    async def run(_: int) -> None:
        await agent.run("hello")

    return await measure(run, total=scale.turns_c1, concurrency=1, warmup=scale.warmup)


async def _insert(dsn: str, scale: Scale) -> Latency:
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, body text NOT NULL)")

    async def insert(_: int) -> None:
        await conn.execute("INSERT INTO bench_floor (body) VALUES ($1)", "hello")

    try:
        return await measure(insert, total=scale.turns_c1, concurrency=1, warmup=scale.warmup)
    finally:
        await conn.close()


async def _counters(infra: Infra, conn: asyncpg.Connection) -> tuple[int, int]:
    commits = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    async with httpx.AsyncClient() as client:
        varz = (await client.get(f"{infra.nats.monitor_url}/varz")).json()
    return int(commits), int(varz["in_msgs"])


async def _platform(infra: Infra, logs: Path, scale: Scale) -> dict[str, object]:
    port = free_port()
    # the same agent as the floor's Agent.run: TestModel, these instructions, no tools; and the
    # streaming benchmark's, whose model stamps its first token with the time it made it
    agents = logs / "agents.toml"
    agents.write_text(
        '[agents.assistant]\ninstructions = "You are a helpful assistant."\ntools = []\n'
        f'[agents.{STREAM_AGENT}]\nmodel = "function:tests.bench.models:timed"\ntools = []\n'
    )
    env = infra.env(
        AGENTBUS_MODEL="test",
        AGENTBUS_PORT=str(port),
        AGENTBUS_AGENTS_FILE=str(agents),
        AGENTBUS_ACTORS=",".join(CHAT_ACTORS),
    )
    commands = {name: ["-m", f"actors.{name}"] for name in CHAT_ACTORS} | {"gateway": ["-m", "gateway"]}
    out: dict[str, object] = {}
    bus = await Bus.connect(infra.bus_config())
    key = await keys.create_key(bus, tenant="bench", name="bench")
    await bus.close()
    headers = {"Authorization": f"Bearer {key}"}
    db = await asyncpg.connect(infra.postgres.uri())
    base = f"http://127.0.0.1:{port}"
    try:
        with processes(commands, env, logs) as children:
            await wait_http(f"{base}/health", timeout=60, children=children)
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
                # a new conversation per turn, so every turn is the same work as the floor's Agent.run
                # (no history to load); the conversations are made before the clock starts
                fresh: list[str] = []

                async def create(_: int) -> None:
                    r = await client.post("/v1/conversations", json={"pattern": "chatbot"})
                    r.raise_for_status()
                    fresh.append(r.json()["id"])

                turns = scale.turns_c1 + scale.turns_c32 + 2 * scale.warmup
                await measure(create, total=turns, concurrency=16, warmup=0)

                async def turn(_: int) -> None:
                    r = await client.post(f"/v1/conversations/{fresh.pop()}/messages", json={"message": "hello"})
                    r.raise_for_status()

                out["c1"] = await measure(turn, total=scale.turns_c1, concurrency=1, warmup=scale.warmup)
                out["c1_budget"] = await _budgeted(infra, base, scale)
                before = await _counters(infra, db)
                cpu = CpuMeter.of(infra, {name: child.pid for name, child in children.items()})
                cpu.start()
                out["c32"] = await measure(turn, total=scale.turns_c32, concurrency=32, warmup=0)
                cpu.stop()
                after = await _counters(infra, db)
                out["cpu"] = cpu
                out["commits_per_turn"] = (after[0] - before[0]) / scale.turns_c32
                out["msgs_per_turn"] = (after[1] - before[1]) / scale.turns_c32
                out["stream"] = await _streams(client, scale)
    finally:
        await db.close()
    return out


async def _budgeted(infra: Infra, base: str, scale: Scale) -> Latency:
    """The same turns for a tenant with a daily token budget (that never runs out): what enforcing it costs."""
    bus = await Bus.connect(infra.bus_config())
    key = await keys.create_key(bus, tenant=BUDGETED, name="bench")
    await tenants.write(bus, BUDGETED, TenantSettings(budgets=Budgets(tokens_per_day=10**12)))
    await bus.close()
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        deadline = time.monotonic() + 10
        while (await client.get("/v1/usage")).json()["budgets"]["day"]["tokens_budget"] != 10**12:
            if time.monotonic() > deadline:  # the executor follows the tenant settings by a KV watch
                raise TimeoutError("the executor did not see the budget")
            await asyncio.sleep(0.05)
        fresh: list[str] = []

        async def create(_: int) -> None:
            r = await client.post("/v1/conversations", json={"pattern": "chatbot"})
            r.raise_for_status()
            fresh.append(r.json()["id"])

        await measure(create, total=scale.turns_c1 + scale.warmup, concurrency=16, warmup=0)

        async def turn(_: int) -> None:
            r = await client.post(f"/v1/conversations/{fresh.pop()}/messages", json={"message": "hello"})
            r.raise_for_status()

        return await measure(turn, total=scale.turns_c1, concurrency=1, warmup=scale.warmup)


async def _spend_query(dsn: str, scale: Scale) -> Latency:
    """The read a budgeted run makes before it starts (RunStore.spend), alone."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, server_settings={"search_path": "executor,public"})
    assert pool is not None
    store = RunStore(pool)

    async def read(_: int) -> None:
        await store.spend(BUDGETED)

    try:
        return await measure(read, total=scale.turns_c1, concurrency=1, warmup=scale.warmup)
    finally:
        await pool.close()


async def _one_stream(client: httpx.AsyncClient, conv: str) -> tuple[float, int, float]:
    """(first-token latency added by the platform in s, tokens received, seconds from request to end)."""
    started = time.perf_counter()
    first_added: float | None = None
    tokens = 0
    async with client.stream(
        "POST", f"/v1/conversations/{conv}/messages", json={"message": "go", "stream": True}
    ) as response:
        response.raise_for_status()
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "delta":
                text = json.loads(line.split(":", 1)[1])["text"]
                if first_added is None:
                    first_added = time.time_ns() / 1e9 - int(text.split()[0]) / 1e9
                tokens += len(text.split())
    assert first_added is not None
    return first_added, tokens, time.perf_counter() - started


async def _streams(client: httpx.AsyncClient, scale: Scale) -> tuple[Latency, float]:
    """First-token latency added by the platform (one stream at a time), and tokens/s across
    `scale.streams` concurrent streams."""
    convs = []
    for _ in range(scale.streams):
        r = await client.post("/v1/conversations", json={"pattern": "chatbot", "agent": STREAM_AGENT})
        r.raise_for_status()
        convs.append(r.json()["id"])
    for conv in convs[:2]:
        await _one_stream(client, conv)  # warm-up
    solo = [await _one_stream(client, convs[0]) for _ in range(scale.stream_solo)]
    start = time.perf_counter()
    many = await asyncio.gather(*(_one_stream(client, c) for c in convs))
    wall = time.perf_counter() - start
    ttft = Latency(tuple(s[0] for s in solo), sum(s[2] for s in solo))
    return ttft, sum(m[1] for m in many) / wall


def _floor_rows(
    label: str, platform: Latency, bare: Latency, durable: Latency, agent: Latency, insert: Latency, writes: int
) -> list[tuple[object, ...]]:
    """The platform, the bare path, and both floors; each floor's percentiles are its parts' summed
    (the bare one) or measured whole (the durable one)."""

    def summed(q: float) -> float:
        return bare.ms(q) + agent.ms(q) + writes * insert.ms(q)

    bare_floor = tuple(f"{summed(q):.2f}" for q in (0.5, 0.99, 0.999, 1.0))
    return [
        (f"platform {label}", *platform.cells(), f"{platform.per_s:.0f}", ""),
        (f"bare HTTP->NATS->2 procs {label}", *bare.cells(), f"{bare.per_s:.0f}", ""),
        (
            f"floor {label} (bare + Agent.run + {writes} INSERT)",
            *bare_floor,
            "",
            f"p50 x{platform.p50_ms / summed(0.5):.2f}  p99 x{platform.p99_ms / summed(0.99):.2f}",
        ),
        (
            f"durable floor {label} ({TURN.counts()['pub-acked publishes']} pub-acks, acks, Agent.run, commits)",
            *durable.cells(),
            f"{durable.per_s:.0f}",
            f"p50 x{platform.p50_ms / durable.p50_ms:.2f}  p99 x{platform.p99_ms / durable.p99_ms:.2f}"
            f"  turns/s x{platform.per_s / durable.per_s:.2f}",
        ),
    ]


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    with report.phase("bare floor"):
        floor_http = await _floor_http(infra, logs, scale)
    with report.phase("durable floor"):
        durable: Floor = await run_floor(infra, logs, scale, TURN, c1=scale.turns_c1, c32=scale.turns_c32)
    agent = await _agent_run(scale)
    insert = await _insert(infra.postgres.uri(), scale)
    with report.phase("platform"):
        platform = await _platform(infra, logs, scale)
    spend = await _spend_query(infra.postgres.uri(), scale)
    commits = float(platform["commits_per_turn"])  # type: ignore[arg-type]
    writes = max(1, round(commits))
    c1, c32, cpu = platform["c1"], platform["c32"], platform["cpu"]
    assert isinstance(c1, Latency) and isinstance(c32, Latency) and isinstance(cpu, CpuMeter)
    rows = [
        *_floor_rows("c=1", c1, floor_http[1], durable.c1, agent, insert, writes),
        *_floor_rows("c=32", c32, floor_http[32], durable.c32, agent, insert, writes),
        ("Agent.run(TestModel) in-process", *agent.cells(), f"{agent.per_s:.0f}", ""),
        ("single-row INSERT", *insert.cells(), f"{insert.per_s:.0f}", ""),
    ]
    report.table("chat turn, non-streamed (ms)", ("path", *LATENCY, "turns/s", "platform / floor"), rows)
    budgeted = platform["c1_budget"]
    assert isinstance(budgeted, Latency)
    report.table(
        "tenant budgets: a turn of a tenant with a budget (its spend read before the run) next to one without (ms)",
        ("path", *LATENCY, "turns/s", "with / without"),
        [
            ("platform c=1, no budget", *c1.cells(), f"{c1.per_s:.0f}", ""),
            (
                "platform c=1, a daily token budget",
                *budgeted.cells(),
                f"{budgeted.per_s:.0f}",
                f"p50 x{budgeted.p50_ms / c1.p50_ms:.2f} ({budgeted.p50_ms - c1.p50_ms:+.2f} ms)",
            ),
            ("the spend read alone (RunStore.spend)", *spend.cells(), f"{spend.per_s:.0f}", ""),
        ],
    )
    stream = platform["stream"]
    assert isinstance(stream, tuple)
    ttft, tokens_per_s = stream
    assert isinstance(ttft, Latency) and isinstance(tokens_per_s, float)
    report.table(
        "streaming: first token added by the platform, one stream at a time (ms)",
        ("figure", *LATENCY, f"tokens/s across {scale.streams} concurrent streams"),
        [(f"{len(ttft.samples)} streams", *ttft.cells(), f"{tokens_per_s:.0f}")],
    )
    cpu.report(report, f"CPU per chat turn, platform c=32 ({scale.turns_c32} turns)", scale.turns_c32, "turn")
    durable.report_cpu(report, "CPU per chat turn, durable floor c=32", "turn")
    counts = TURN.counts()
    report.table(
        "per turn (c=32 run)",
        ("figure", "measured", "the durable floor's (from the code; see tests/bench/durable.py)"),
        [
            ("PostgreSQL commits (every transaction, reads too)", f"{commits:.2f}", f"{counts['commits']} writes"),
            (
                "NATS messages in (publishes, acks, pulls, requests)",
                f"{float(platform['msgs_per_turn']):.1f}",  # type: ignore[arg-type]
                f"{counts['pub-acked publishes']} publishes, {counts['ack_sync'] + counts['plain acks']} acks, pulls",
            ),
        ],
    )
    bare_floor = floor_http[1].p50_ms + agent.p50_ms + writes * insert.p50_ms
    report.target(
        "chat turn c=1 p50",
        f"{c1.p50_ms:.1f} ms = x{c1.p50_ms / bare_floor:.2f} the floor ({bare_floor:.1f} ms), "
        f"x{c1.p50_ms / durable.c1.p50_ms:.2f} the durable floor ({durable.c1.p50_ms:.1f} ms)",
        "<= x2 the floor",
        c1.p50_ms <= 2 * bare_floor,
    )
    report.target(
        "chat turn c=32",
        f"{c32.per_s:.0f} turns/s (durable floor {durable.c32.per_s:.0f}/s); "
        f"CPU {cpu.per_unit_ms(scale.turns_c32):.1f} ms/turn "
        f"(durable floor {durable.cpu_ms:.1f})",
        ">= 250 turns/s",
        c32.per_s >= 250,
    )
