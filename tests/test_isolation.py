"""Isolated tools: a `python:` tool and a stdio MCP server under CPU-time, memory and wall-time limits.
A tool that allocates without end (or loops) is stopped at its limit, the run fails naming it, and the
executor keeps serving: the next run completes."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.conftest import Platform, wait_until

Start = Callable[..., Awaitable[Platform]]

AGENTS = f"""
[tools."python:tests.python_tools:hog"]
isolated = true
limits = {{ cpu_s = 10, memory_mb = 300, wall_s = 20 }}

[tools."python:tests.python_tools:add"]
isolated = true

[tools."python:tests.python_tools:spin"]
isolated = true
limits = {{ cpu_s = 1, wall_s = 20 }}

[mcp_servers.boxed]
command = "{sys.executable}"
args = ["-m", "tests.mcp_servers", "stdio"]
isolated = true
limits = {{ cpu_s = 30, memory_mb = 1024, wall_s = 1 }}

[agents.worker]
tools = [
  "python:tests.python_tools:hog", "python:tests.python_tools:add", "python:tests.python_tools:spin",
  "mcp:boxed/spin", "mcp:boxed/add",
]
"""


def _calling(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls the tool the prompt names once, then answers with what it returned."""
    returns = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)]
    if returns:
        return ModelResponse(parts=[TextPart(returns[-1].model_response_str())])
    prompt = next(
        str(p.content) for m in messages if isinstance(m, ModelRequest) for p in m.parts if p.part_kind == "user-prompt"
    )
    args = {"a": 2, "b": 3} if prompt.endswith("add") else {}
    return ModelResponse(parts=[ToolCallPart(prompt, args)])


def _servers() -> list[int]:
    """The test MCP server processes this test process started (the isolation launcher execs into them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"tests.mcp_servers" in command:
            found.append(int(entry.name))
    return found


async def _gone(pid: int) -> bool:
    return pid not in _servers()


async def _turn(platform: Platform, tool: str) -> tuple[int, dict[str, Any]]:
    async with platform.client() as client:
        conv = (await client.post("/v1/conversations", json={"pattern": "chatbot", "agent": "worker"})).json()["id"]
        r = await client.post(f"/v1/conversations/{conv}/messages", json={"message": tool})
        return r.status_code, r.json()


async def test_a_tool_that_allocates_without_end_is_stopped_and_the_executor_keeps_serving(
    start_platform: Start, tmp_path: Path
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    platform = await start_platform(FunctionModel(_calling), agents_file=agents)

    status, body = await _turn(platform, "hog")
    assert status == 422, body
    error = body["error"]
    assert (error["code"], error["details"]["limit"], error["details"]["tool"]) == (
        "limit_exceeded",
        "memory_mb",
        "hog",
    )
    assert "memory limit of 300 MB" in error["message"]

    status, body = await _turn(platform, "spin")  # a loop is stopped at its CPU time
    assert status == 422, body
    assert (body["error"]["details"]["limit"], body["error"]["details"]["tool"]) == ("cpu_s", "spin")

    status, body = await _turn(platform, "add")  # the executor is still here, and so is isolation
    assert (status, body["message"]["content"]) == (200, "5"), body


async def test_an_isolated_mcp_server_stuck_in_a_loop_is_killed_at_its_wall_time_and_started_again(
    start_platform: Start, tmp_path: Path
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    platform = await start_platform(FunctionModel(_calling), agents_file=agents)

    [stuck] = _servers()
    status, body = await _turn(platform, "boxed_spin")
    assert status == 422, body
    assert (body["error"]["code"], body["error"]["details"]["limit"]) == ("limit_exceeded", "wall_s")
    assert body["error"]["details"]["tool"] == "boxed_spin"  # as the model and GET /v1/tools name it
    assert "wall-time limit of 1 s" in body["error"]["message"]

    await wait_until(lambda: _gone(stuck), what="the stuck server process to be killed")
    status, body = await _turn(platform, "boxed_add")  # a new server process answers
    assert status == 200, body
    assert _servers() != [stuck]
    assert '"untrusted_data":5' in body["message"]["content"].replace(" ", "")
