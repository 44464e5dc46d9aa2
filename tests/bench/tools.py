"""Tool-call benchmark: a chat turn whose model calls one tool (`current_time`) and then answers,
through the platform (HTTP -> gateway -> conversation -> executor -> back, each its own process) next
to the same pydantic-ai agent run in process (the same FunctionModel, the same tool, the executor's
ToolGuard). The difference is the platform's added time for a turn with a tool call; the same pair
for a turn whose model answers at once shows what the tool call itself adds on each side, and the
same for a tool of an MCP server over stdio (tests/mcp_servers.py; in process, one connection for
every run, as the executor keeps one)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import httpx
from fastmcp.client.transports import StdioTransport
from pydantic_ai import Agent, Tool
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.models.function import FunctionModel

from actors.executor.limits import RunLimits, ToolGuard
from actors.executor.tools import current_time
from bus import keys
from bus.client import Bus
from tests.bench.harness import LATENCY, ROOT, Infra, Latency, Report, Scale, free_port, measure, processes, wait_http
from tests.bench.models import no_tool, one_mcp_tool, one_tool

ACTORS = ("conversation", "executor")
# agent -> (its model in tests/bench/models.py, its tools)
AGENTS = {
    "tooler": ("one_tool", "current_time"),
    "plain": ("no_tool", "current_time"),
    "mcp": ("one_mcp_tool", "mcp:demo/echo"),
}
MCP_SERVER = [sys.executable, "-m", "tests.mcp_servers", "stdio"]  # the tests' MCP server, over stdio


async def _in_process(scale: Scale, model: FunctionModel, *, mcp: bool = False) -> Latency:
    """The same agent run in this process (`mcp`: its tool from the MCP server, connected once)."""
    server = MCPToolset(StdioTransport(MCP_SERVER[0], MCP_SERVER[1:], cwd=str(ROOT), keep_alive=False))
    toolsets = [server.prefixed("demo")] if mcp else []
    agent = Agent(model, tools=[Tool(current_time)], toolsets=toolsets, capabilities=[ToolGuard(RunLimits())])

    async def run(_: int) -> None:
        await agent.run("what time is it?")

    async with server if mcp else contextlib.nullcontext():
        return await measure(run, total=scale.turns_c1, concurrency=1, warmup=scale.warmup)


async def _platform(infra: Infra, logs: Path, scale: Scale) -> dict[str, Latency]:
    port = free_port()
    agents = logs / "tools-agents.toml"
    server = ", ".join(f'"{a}"' for a in MCP_SERVER[1:])
    agents.write_text(
        f'[mcp_servers.demo]\ncommand = "{MCP_SERVER[0]}"\nargs = [{server}]\ncwd = "{ROOT}"\n'
        + "".join(
            f'[agents.{name}]\nmodel = "function:tests.bench.models:{model}"\ntools = ["{tool}"]\n'
            for name, (model, tool) in AGENTS.items()
        )
    )
    env = infra.env(AGENTBUS_PORT=str(port), AGENTBUS_AGENTS_FILE=str(agents), AGENTBUS_ACTORS=",".join(ACTORS))
    commands = {name: ["-m", f"actors.{name}"] for name in ACTORS} | {"gateway": ["-m", "gateway"]}
    bus = await Bus.connect(infra.bus_config())
    key = await keys.create_key(bus, tenant="bench-tools", name="bench")
    await bus.close()
    base = f"http://127.0.0.1:{port}"
    with processes(commands, env, logs) as children:
        await wait_http(f"{base}/health", timeout=60, children=children)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
            return {agent: await _turns(client, agent, scale) for agent in AGENTS}


async def _turns(client: httpx.AsyncClient, agent: str, scale: Scale) -> Latency:
    """Turns of `agent`, one at a time, each in a new conversation (made before the clock starts)."""
    fresh: list[str] = []

    async def create(_: int) -> None:
        r = await client.post("/v1/conversations", json={"pattern": "chatbot", "agent": agent})
        r.raise_for_status()
        fresh.append(r.json()["id"])

    await measure(create, total=scale.turns_c1 + scale.warmup, concurrency=8, warmup=0)

    async def turn(_: int) -> None:
        r = await client.post(f"/v1/conversations/{fresh.pop()}/messages", json={"message": "what time is it?"})
        r.raise_for_status()
        assert r.json()["message"]["content"] == "It is now."

    return await measure(turn, total=scale.turns_c1, concurrency=1, warmup=scale.warmup)


def _rows(label: str, platform: Latency, in_process: Latency) -> list[tuple[object, ...]]:
    added = platform.p50_ms - in_process.p50_ms
    return [
        (
            f"platform, {label}, c=1",
            *platform.cells(),
            f"{platform.per_s:.0f}",
            f"x{platform.p50_ms / in_process.p50_ms:.1f}",
        ),
        (f"Agent.run in process, {label}", *in_process.cells(), f"{in_process.per_s:.0f}", ""),
        (f"platform's added time, {label} (p50)", f"{added:.2f}", "", "", "", "", ""),
    ]


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    tool_in_process = await _in_process(scale, one_tool())
    plain_in_process = await _in_process(scale, no_tool())
    mcp_in_process = await _in_process(scale, one_mcp_tool(), mcp=True)
    with report.phase("platform"):
        platform = await _platform(infra, logs, scale)
    rows = [
        *_rows("one tool call", platform["tooler"], tool_in_process),
        *_rows("no tool call", platform["plain"], plain_in_process),
        *_rows("one MCP tool call (stdio)", platform["mcp"], mcp_in_process),
    ]
    report.table("chat turn with one tool call (ms)", ("path", *LATENCY, "turns/s", "platform / in process"), rows)
    added = platform["tooler"].p50_ms - tool_in_process.p50_ms
    report.target("turn with one tool call, platform added p50", f"{added:.1f} ms", "-", None)
