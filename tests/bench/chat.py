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

from bus import keys
from bus.client import Bus
from bus.config import BusConfig
from tests.bench.harness import Infra, Latency, free_port, measure, print_table, processes, wait_http

TURNS_C1 = 300
TURNS_C32 = 1600
STREAMS = 16


async def _floor_http(infra: Infra, logs: Path) -> dict[int, Latency]:
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

            results[1] = await measure(turn, total=TURNS_C1, concurrency=1)
            results[32] = await measure(turn, total=TURNS_C32, concurrency=32)
    return results


async def _agent_run() -> Latency:
    agent = Agent(TestModel(), instructions="You are a helpful assistant.")

    async def run(_: int) -> None:
        await agent.run("hello")

    return await measure(run, total=TURNS_C1, concurrency=1)


async def _insert(dsn: str) -> Latency:
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, body text NOT NULL)")

    async def insert(_: int) -> None:
        await conn.execute("INSERT INTO bench_floor (body) VALUES ($1)", "hello")

    try:
        return await measure(insert, total=TURNS_C1, concurrency=1)
    finally:
        await conn.close()


async def _counters(infra: Infra, conn: asyncpg.Connection) -> tuple[int, int]:
    commits = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    async with httpx.AsyncClient() as client:
        varz = (await client.get(f"{infra.nats.monitor_url}/varz")).json()
    return int(commits), int(varz["in_msgs"])


async def _platform(infra: Infra, logs: Path) -> dict[str, object]:
    port = free_port()
    # the same agent as the floor's Agent.run: TestModel, these instructions, no tools
    agents = logs / "agents.toml"
    agents.write_text('[agents.assistant]\ninstructions = "You are a helpful assistant."\ntools = []\n')
    env = infra.env(
        AGENTBUS_MODEL="test",
        AGENTBUS_PORT=str(port),
        AGENTBUS_AGENTS_FILE=str(agents),
        AGENTBUS_ACTORS="conversation,executor",
    )
    stream_env = {**env, "AGENTBUS_MODEL": "function:tests.bench.models:timed"}
    commands = {
        "conversation": ["-m", "actors.conversation"],
        "executor": ["-m", "actors.executor"],
        "gateway": ["-m", "gateway"],
    }
    out: dict[str, object] = {}
    bus = await Bus.connect(BusConfig(servers=(infra.nats.url,)))
    key = await keys.create_key(bus, tenant="bench", name="bench")
    await bus.close()
    headers = {"Authorization": f"Bearer {key}"}
    db = await asyncpg.connect(infra.postgres.uri())
    base = f"http://127.0.0.1:{port}"
    try:
        with processes(commands, env, logs):
            await wait_http(f"{base}/health", timeout=60)
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
                # a new conversation per turn, so every turn is the same work as the floor's Agent.run
                # (no history to load); the conversations are made before the clock starts
                fresh: list[str] = []

                async def create(_: int) -> None:
                    r = await client.post("/v1/conversations", json={"pattern": "chatbot"})
                    r.raise_for_status()
                    fresh.append(r.json()["id"])

                await measure(create, total=TURNS_C1 + TURNS_C32 + 40, concurrency=16, warmup=0)

                async def turn(_: int) -> None:
                    r = await client.post(f"/v1/conversations/{fresh.pop()}/messages", json={"message": "hello"})
                    r.raise_for_status()

                out["c1"] = await measure(turn, total=TURNS_C1, concurrency=1)
                before = await _counters(infra, db)
                out["c32"] = await measure(turn, total=TURNS_C32, concurrency=32, warmup=0)
                after = await _counters(infra, db)
                out["commits_per_turn"] = (after[0] - before[0]) / TURNS_C32
                out["msgs_per_turn"] = (after[1] - before[1]) / TURNS_C32

        with (
            processes({"executor-stream": commands["executor"]}, stream_env, logs),
            processes({k: v for k, v in commands.items() if k != "executor"}, stream_env, logs),
        ):
            await wait_http(f"{base}/health", timeout=60)
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
                out["stream"] = await _streams(client)
    finally:
        await db.close()
    return out


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


async def _streams(client: httpx.AsyncClient) -> dict[str, float]:
    convs = []
    for _ in range(STREAMS):
        r = await client.post("/v1/conversations", json={"pattern": "chatbot"})
        convs.append(r.json()["id"])
    for conv in convs[:2]:
        await _one_stream(client, conv)  # warm-up
    solo = [await _one_stream(client, convs[0]) for _ in range(30)]
    start = time.perf_counter()
    many = await asyncio.gather(*(_one_stream(client, c) for c in convs))
    wall = time.perf_counter() - start
    ttft = sorted(s[0] for s in solo)
    return {
        "ttft_added_p50_ms": ttft[len(ttft) // 2] * 1000,
        "ttft_added_p99_ms": ttft[-1] * 1000,
        "tokens_per_s_16": sum(m[1] for m in many) / wall,
    }


async def run(infra: Infra, logs: Path) -> None:
    floor_http = await _floor_http(infra, logs)
    agent = await _agent_run()
    insert = await _insert(infra.postgres.uri())
    platform = await _platform(infra, logs)
    commits = float(platform["commits_per_turn"])  # type: ignore[arg-type]
    writes = max(1, round(commits))
    rows: list[tuple[object, ...]] = []
    for c in (1, 32):
        p = platform[f"c{c}"]
        assert isinstance(p, Latency)
        f = floor_http[c]
        floor_p50 = f.p50_ms + agent.p50_ms + writes * insert.p50_ms
        floor_p99 = f.p99_ms + agent.p99_ms + writes * insert.p99_ms
        rows.append((f"platform c={c}", f"{p.p50_ms:.2f}", f"{p.p99_ms:.2f}", f"{p.per_s:.0f}", ""))
        rows.append((f"bare HTTP->NATS->2 procs c={c}", f"{f.p50_ms:.2f}", f"{f.p99_ms:.2f}", f"{f.per_s:.0f}", ""))
        rows.append(
            (
                f"floor c={c} (bare + Agent.run + {writes} INSERT)",
                f"{floor_p50:.2f}",
                f"{floor_p99:.2f}",
                "",
                f"p50 x{p.p50_ms / floor_p50:.2f}  p99 x{p.p99_ms / floor_p99:.2f}",
            )
        )
    rows.append(
        ("Agent.run(TestModel) in-process", f"{agent.p50_ms:.2f}", f"{agent.p99_ms:.2f}", f"{agent.per_s:.0f}", "")
    )
    rows.append(("single-row INSERT", f"{insert.p50_ms:.2f}", f"{insert.p99_ms:.2f}", f"{insert.per_s:.0f}", ""))
    print_table("chat turn, non-streamed (ms)", ("path", "p50", "p99", "turns/s", "platform / floor"), rows)
    stream = platform["stream"]
    assert isinstance(stream, dict)
    print_table(
        "streaming",
        ("figure", "value"),
        [
            ("first token added by the platform p50 (ms)", f"{stream['ttft_added_p50_ms']:.2f}"),
            ("first token added by the platform max of 30 (ms)", f"{stream['ttft_added_p99_ms']:.2f}"),
            (f"tokens/s across {STREAMS} concurrent streams", f"{stream['tokens_per_s_16']:.0f}"),
        ],
    )
    print_table(
        "per turn (c=32 run)",
        ("figure", "measured", "design minimum"),
        [
            ("PostgreSQL commits", f"{commits:.2f}", "4 (turn accepted; run recorded; run ended; reply stored)"),
            (
                "NATS messages in (publishes, acks, pulls, requests)",
                f"{float(platform['msgs_per_turn']):.1f}",  # type: ignore[arg-type]
                "14 (8 publishes: command, accepted, run request, started, text, end, finished, turn; 3 acks; 3 pulls)",
            ),
        ],
    )
