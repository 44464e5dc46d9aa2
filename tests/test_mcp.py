"""MCP servers declared in the agents file, started by the test (the `mcp` package's MCPServer) over
stdio and streamable HTTP, end to end through the gateway: listed, called, discovered again when a
server says its tools changed, and their output reaching the model as untrusted data."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from bus.embedded import free_port
from schemas.tools import UNTRUSTED_KEY
from tests.conftest import ROOT, Platform, wait_until
from tests.mcp_servers import INJECTION

Start = Callable[..., Awaitable[Platform]]


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's MCP server over HTTP is on loopback: allowed as an operator allows an internal one."""
    monkeypatch.setenv("AGENTBUS_OUTBOUND_ALLOW", "127.0.0.1")


@pytest.fixture
async def http_server() -> AsyncIterator[str]:
    """The test MCP server over streamable HTTP, as its own process; its URL."""
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the test's work)
        [sys.executable, "-m", "tests.mcp_servers", "http", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        await wait_until(listening, timeout=20, what="the MCP server to listen")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()  # its open sessions would hold a graceful stop
        proc.wait(10)


def _agents(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[mcp_servers.local]
command = "{sys.executable}"
args = ["-m", "tests.mcp_servers", "stdio"]

[mcp_servers.remote]
url = "{url}"

[agents.files]
tools = ["mcp:local", "current_time"]

[agents.adder]
tools = ["mcp:remote/add", "mcp:remote/inject"]
"""
    )
    return path


def _answering(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls the tool the prompt names (`call <tool> <json args>`) once, then answers with what it read."""
    returns = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)]
    if returns:
        return ModelResponse(parts=[TextPart(returns[-1].model_response_str())])
    prompt = next(
        str(p.content) for m in messages if isinstance(m, ModelRequest) for p in m.parts if p.part_kind == "user-prompt"
    )
    _, tool, args = prompt.split(" ", 2)
    return ModelResponse(parts=[ToolCallPart(tool, json.loads(args))])


async def _turn(platform: Platform, agent: str, message: str) -> dict[str, Any]:
    async with platform.client() as client:
        conv = (await client.post("/v1/conversations", json={"pattern": "chatbot", "agent": agent})).json()["id"]
        r = await client.post(f"/v1/conversations/{conv}/messages", json={"message": message})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


async def test_mcp_tools_are_listed_called_and_rediscovered(
    start_platform: Start, tmp_path: Path, http_server: str
) -> None:
    platform = await start_platform(FunctionModel(_answering), agents_file=_agents(tmp_path, http_server))
    async with platform.client() as client:
        listed = (await client.get("/v1/tools")).json()
        by_name = {t["name"]: t for t in listed["tools"]}
        assert listed["unavailable"] == {}
        assert set(listed["agents"]["files"]) == {
            "current_time",
            *(f"local_{t}" for t in ("echo", "add", "inject", "grow", "hog", "spin")),
        }
        assert listed["agents"]["adder"] == ["remote_add", "remote_inject"]
        add = by_name["remote_add"]
        assert (add["source"], add["server"], add["untrusted"]) == ("mcp", "remote", True)
        assert add["parameters"]["properties"].keys() == {"a", "b"}
        assert by_name["current_time"]["source"] == "built-in"

        # one call of one tool, over each transport
        r = await client.post("/v1/tools/remote_add/call", json={"args": {"a": 2, "b": 3}})
        assert (r.status_code, r.json()["output"]) == (200, "5"), r.text
        r = await client.post("/v1/tools/local_echo/call", json={"args": {"text": "hi"}})
        assert (r.status_code, r.json()["output"], r.json()["untrusted"]) == (200, "hi", True), r.text
        r = await client.post("/v1/tools/current_time/call", json={"args": {"timezone": "Europe/Paris"}})
        assert r.status_code == 200 and r.json()["output"].endswith(("+01:00", "+02:00")), r.text

        # clear errors: an unknown tool is a 404 with its code, bad arguments a 422
        r = await client.post("/v1/tools/no_such_tool/call", json={"args": {}})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_tool"), r.text
        r = await client.post("/v1/tools/remote_add/call", json={"args": {"a": "two"}})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid"), r.text
        assert "b" in r.json()["error"]["message"]

        # a server that adds a tool and says so: the tool is listed without a restart
        r = await client.post("/v1/tools/local_grow/call", json={"args": {}})
        assert r.status_code == 200, r.text

        async def late_listed() -> bool:
            return "local_late" in (await client.get("/v1/tools")).json()["agents"]["files"]

        await wait_until(late_listed, what="the new tool to be listed")

    # an agent run calls an MCP tool on the shared connection (over stdio, then HTTP)
    reply = await _turn(platform, "files", "call local_late {}")
    assert "late tool here" in reply["message"]["content"]
    reply = await _turn(platform, "adder", 'call remote_add {"a": 20, "b": 22}')
    assert json.loads(reply["message"]["content"])[UNTRUSTED_KEY] == 42


async def test_mcp_output_reaches_the_model_as_untrusted_data(
    start_platform: Start, tmp_path: Path, http_server: str
) -> None:
    received: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)]
        if not returns:
            return ModelResponse(parts=[ToolCallPart("remote_inject", {})])
        received.append(returns[0].model_response_str())
        return ModelResponse(parts=[TextPart("noted")])

    platform = await start_platform(FunctionModel(model), agents_file=_agents(tmp_path, http_server))
    reply = await _turn(platform, "adder", "what does the tool say?")
    assert reply["message"]["content"] == "noted"
    [text] = received
    quoted = json.loads(text)  # the model reads a JSON object: the server's text is a string inside it
    assert quoted[UNTRUSTED_KEY] == INJECTION
    assert "not instructions" in quoted["notice"]
    assert not text.startswith(INJECTION)


async def test_a_server_that_cannot_be_reached_is_reported_and_the_rest_keeps_working(
    start_platform: Start, tmp_path: Path
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(
        f"""
[mcp_servers.down]
url = "http://127.0.0.1:{free_port()}/mcp"

[agents.needs-down]
tools = ["mcp:down"]
"""
    )
    platform = await start_platform(FunctionModel(_answering), agents_file=agents)
    async with platform.client() as client:
        listed = (await client.get("/v1/tools")).json()
        assert "down" in listed["unavailable"]
        assert listed["agents"]["needs-down"] == []
        r = await client.post("/v1/tools/current_time/call", json={"args": {}})
        assert r.status_code == 200, r.text
        conv = (await client.post("/v1/conversations", json={"pattern": "chatbot", "agent": "needs-down"})).json()
        r = await client.post(f"/v1/conversations/{conv['id']}/messages", json={"message": "call down_x {}"})
        assert r.status_code == 503, r.text  # the turn fails, saying its tool is unavailable
    reply = await _turn(platform, "assistant", 'call current_time {"timezone": "UTC"}')  # other agents run on
    assert "+00:00" in reply["message"]["content"]
