"""Tool-call benchmark: a chat turn whose model calls one tool (`current_time`) and then answers,
through the platform (HTTP -> gateway -> conversation -> executor -> back, each its own process) next
to the same pydantic-ai agent run in process (the same FunctionModel, the same tool, the executor's
ToolGuard). The difference is the platform's added time for a turn with a tool call."""

from __future__ import annotations

from pathlib import Path

import httpx
from pydantic_ai import Agent, Tool

from actors.executor.limits import RunLimits, ToolGuard
from actors.executor.tools import current_time
from bus import keys
from bus.client import Bus
from bus.config import BusConfig
from tests.bench.harness import LATENCY, Infra, Latency, Report, Scale, free_port, measure, processes, wait_http
from tests.bench.models import one_tool

ACTORS = ("conversation", "executor")
AGENT = "tooler"


async def _in_process(scale: Scale) -> Latency:
    agent = Agent(one_tool(), tools=[Tool(current_time)], capabilities=[ToolGuard(RunLimits())])

    async def run(_: int) -> None:
        await agent.run("what time is it?")

    return await measure(run, total=scale.turns_c1, concurrency=1, warmup=scale.warmup)


async def _platform(infra: Infra, logs: Path, scale: Scale) -> Latency:
    port = free_port()
    agents = logs / "tools-agents.toml"
    agents.write_text(f'[agents.{AGENT}]\nmodel = "function:tests.bench.models:one_tool"\ntools = ["current_time"]\n')
    env = infra.env(AGENTBUS_PORT=str(port), AGENTBUS_AGENTS_FILE=str(agents), AGENTBUS_ACTORS=",".join(ACTORS))
    commands = {name: ["-m", f"actors.{name}"] for name in ACTORS} | {"gateway": ["-m", "gateway"]}
    bus = await Bus.connect(BusConfig(servers=(infra.nats.url,)))
    key = await keys.create_key(bus, tenant="bench-tools", name="bench")
    await bus.close()
    base = f"http://127.0.0.1:{port}"
    with processes(commands, env, logs) as children:
        await wait_http(f"{base}/health", timeout=60, children=children)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
            fresh: list[str] = []

            async def create(_: int) -> None:
                r = await client.post("/v1/conversations", json={"pattern": "chatbot", "agent": AGENT})
                r.raise_for_status()
                fresh.append(r.json()["id"])

            await measure(create, total=scale.turns_c1 + scale.warmup, concurrency=8, warmup=0)

            async def turn(_: int) -> None:
                r = await client.post(f"/v1/conversations/{fresh.pop()}/messages", json={"message": "what time is it?"})
                r.raise_for_status()
                assert r.json()["message"]["content"] == "It is now."

            return await measure(turn, total=scale.turns_c1, concurrency=1, warmup=scale.warmup)


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    in_process = await _in_process(scale)
    with report.phase("platform"):
        platform = await _platform(infra, logs, scale)
    added = platform.p50_ms - in_process.p50_ms
    rows: list[tuple[object, ...]] = [
        (
            "platform, one tool call, c=1",
            *platform.cells(),
            f"{platform.per_s:.0f}",
            f"x{platform.p50_ms / in_process.p50_ms:.1f}",
        ),
        ("Agent.run in process, same model and tool", *in_process.cells(), f"{in_process.per_s:.0f}", ""),
        ("platform's added time (p50)", f"{added:.2f}", "", "", "", "", ""),
    ]
    report.table("chat turn with one tool call (ms)", ("path", *LATENCY, "turns/s", "platform / in process"), rows)
    report.target("turn with one tool call, platform added p50", f"{added:.1f} ms", "-", None)
