"""The breaker and fallback path's overhead: a chat turn whose first model is down (its breaker open, so
the turn is refused there at once and falls back to the second) next to a turn on one healthy model,
both answered by the same local provider server (OpenAI chat completions over real HTTP).

platform: HTTP -> gateway -> conversation -> executor (pydantic-ai OpenAIChatModel -> provider) -> back.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from bus import keys
from bus.client import Bus
from tests.bench.harness import LATENCY, Infra, Latency, Report, Scale, free_port, processes, wait_http
from tests.provider_servers import Behaviour, ProviderServer

ACTORS = ("conversation", "executor")
OPENING_TURNS = 3  # the failing turns that open the down model's breaker (AGENTBUS_BREAKER_FAILURES)


def _agents(up: ProviderServer, down: ProviderServer) -> str:
    return f"""
[providers.up]
base_url = "{up.openai_url}"
[providers.down]
base_url = "{down.openai_url}"

[agents.healthy]
model = "up:bench"
tools = []
[agents.fallback]
model = ["down:bench", "up:bench"]
tools = []
"""


async def _conversations(client: httpx.AsyncClient, agent: str, count: int) -> list[str]:
    made: list[str] = []
    for _ in range(count):
        r = await client.post("/v1/conversations", json={"agent": agent})
        r.raise_for_status()
        made.append(r.json()["id"])
    return made


async def _turn(client: httpx.AsyncClient, conversation: str) -> float:
    started = time.perf_counter()
    r = await client.post(f"/v1/conversations/{conversation}/messages", json={"message": "hello"})
    r.raise_for_status()
    assert r.json()["model"] == "up:bench", r.text
    return time.perf_counter() - started


async def _interleaved(client: httpx.AsyncClient, scale: Scale) -> tuple[Latency, Latency]:
    """Both paths' turns, one of each in turn (so a change in the machine's load weighs on both alike),
    each a new conversation; the down model's breaker is opened first by OPENING_TURNS failing turns."""
    total = scale.turns_c1 + scale.warmup
    healthy = await _conversations(client, "healthy", total)
    fallback = await _conversations(client, "fallback", total + OPENING_TURNS)
    for _ in range(OPENING_TURNS):
        await _turn(client, fallback.pop())
    samples: dict[str, list[float]] = {"healthy": [], "fallback": []}
    for i in range(total):
        for name, pool in (("healthy", healthy), ("fallback", fallback)):
            took = await _turn(client, pool.pop())
            if i >= scale.warmup:
                samples[name].append(took)
    return Latency(tuple(samples["healthy"]), sum(samples["healthy"])), Latency(
        tuple(samples["fallback"]), sum(samples["fallback"])
    )


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    port = free_port()
    async with ProviderServer("up") as up, ProviderServer("down") as down:
        down.behaviour = Behaviour.SERVER_ERROR
        agents = logs / "providers-agents.toml"
        agents.write_text(_agents(up, down))
        env = infra.env(
            AGENTBUS_PORT=str(port),
            AGENTBUS_AGENTS_FILE=str(agents),
            AGENTBUS_ACTORS=",".join(ACTORS),
            AGENTBUS_OFFLINE="",
            AGENTBUS_BREAKER_FAILURES=str(OPENING_TURNS),
            AGENTBUS_BREAKER_COOLDOWN="3600",
        )
        commands = {name: ["-m", f"actors.{name}"] for name in ACTORS} | {"gateway": ["-m", "gateway"]}
        bus = await Bus.connect(infra.bus_config())
        key = await keys.create_key(bus, tenant="bench", name="bench")
        await bus.close()
        base = f"http://127.0.0.1:{port}"
        with processes(commands, env, logs) as children:
            await wait_http(f"{base}/health", timeout=60, children=children)
            async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
                with report.phase("turns"):
                    healthy, fallback = await _interleaved(c, scale)
        refused = len(down.requests)
    added = fallback.p50_ms - healthy.p50_ms
    report.table(
        "chat turn through the breaker and fallback path, c=1 (ms)",
        ("path", *LATENCY, "turns/s", "vs one healthy model"),
        [
            ("one healthy model", *healthy.cells(), f"{healthy.per_s:.0f}", ""),
            (
                "first model down (breaker open) -> second answers",
                *fallback.cells(),
                f"{fallback.per_s:.0f}",
                f"p50 x{fallback.p50_ms / healthy.p50_ms:.2f} ({added:+.2f} ms)  "
                f"p99 x{fallback.p99_ms / healthy.p99_ms:.2f}",
            ),
        ],
    )
    report.table(
        "requests the down model received",
        ("figure", "count"),
        [("while its breaker was closed (then open: none)", refused)],
    )
    report.target(
        "breaker + fallback turn c=1 p50",
        f"{fallback.p50_ms:.1f} ms = x{fallback.p50_ms / healthy.p50_ms:.2f} one healthy model ({added:+.2f} ms)",
        "(no target: measured)",
        None,
    )
