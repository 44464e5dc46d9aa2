"""`agentbus chat | status | tasks | runs | research | dlq` against a real gateway (`start_platform`).

Each command runs as a user runs it — `bus.cli.main(argv)` with AGENTBUS_URL / AGENTBUS_KEY set, in a thread
of its own (it has its own event loop, the platform runs in the test's) — and its stdout is read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import aconnect_sse
from pydantic_ai.messages import ModelMessage, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from bus import cli, subjects
from bus.headers import Trace
from tests.conftest import ROOT, Platform, wait_until
from tests.models import Gate, replying
from tests.test_research import Researchers

pytestmark = pytest.mark.timeout(120)

Start = Callable[..., Awaitable[Platform]]


@dataclass
class Ran:
    code: int
    out: str
    err: str


class Agentbus:
    """Runs `agentbus ARGV` in a thread against one gateway; `output` is what it has printed so far."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.capsys, self.monkeypatch = capsys, monkeypatch
        self.out, self.err = "", ""

    def target(self, url: str, key: str, home: Path) -> None:
        self.monkeypatch.setenv("AGENTBUS_URL", url)
        self.monkeypatch.setenv("AGENTBUS_KEY", key)
        self.monkeypatch.setenv("AGENTBUS_HOME", str(home))
        self.monkeypatch.setenv("COLUMNS", "200")

    def output(self) -> str:
        got = self.capsys.readouterr()
        self.out, self.err = self.out + got.out, self.err + got.err
        return self.out

    def start(self, *argv: str, stdin: str = "") -> asyncio.Task[int]:
        self.output()
        self.out, self.err = "", ""
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return asyncio.create_task(asyncio.to_thread(cli.main, list(argv)))

    async def __call__(self, *argv: str, stdin: str = "") -> Ran:
        code = await asyncio.wait_for(self.start(*argv, stdin=stdin), 60)
        self.output()
        return Ran(code, self.out, self.err)


@pytest.fixture
def agentbus(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Agentbus:
    return Agentbus(capsys, monkeypatch)


def told_the_time(messages: list[ModelMessage]) -> bool:
    return any(isinstance(p, ToolReturnPart) for m in messages for p in getattr(m, "parts", []))


def clock_model() -> FunctionModel:
    """Streams a few words, calls `current_time`, then streams a few more."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        if not told_the_time(messages):
            for word in ("Let ", "me ", "look."):
                yield word
            yield {0: DeltaToolCall(name="current_time", json_args='{"timezone": "UTC"}', tool_call_id="t1")}
        else:
            for word in ("It ", "is ", "late ", "now."):
                yield word

    return FunctionModel(stream_function=stream, model_name="clock")


async def test_chat_streams_the_reply_and_shows_the_tool_call(
    start_platform: Start, agentbus: Agentbus, tmp_path: Path
) -> None:
    platform = await start_platform(clock_model())
    agentbus.target(platform.url, platform.key, tmp_path)
    ran = await agentbus("chat", stdin="what time is it?\n")
    assert ran.code == 0, ran.err
    out = ran.out
    assert "Let me look." in out and "It is late now." in out
    assert out.index("Let me look.") < out.index("⚙ current_time") < out.index("It is late now.")
    assert 'current_time({"timezone":"UTC"})' in out and "↳ current_time: 20" in out  # its ISO time
    assert platform.key not in out + ran.err
    async with platform.client() as client:  # the turn was stored in the conversation the chat made
        conversation_id = out.split("new conversation", 1)[1].split()[0]
        messages = (await client.get(f"/v1/conversations/{conversation_id}/messages")).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["content"] == "It is late now."


async def test_chat_commands_new_list_switch_last_and_an_unknown_conversation(
    start_platform: Start, agentbus: Agentbus, tmp_path: Path
) -> None:
    platform = await start_platform()
    agentbus.target(platform.url, platform.key, tmp_path)
    async with platform.client() as client:
        existing = (await client.post("/v1/conversations", json={})).json()["id"]
    ran = await agentbus("chat", stdin="/new\n/list\n/switch 3\n/switch nope\n/bogus\n/quit\nnot sent\n")
    assert ran.code == 0, ran.err
    made = re.findall(r"^(?:you> )?new conversation (\S+) agent", ran.out, re.M)
    assert len(made) == 2
    listed = re.findall(r"^\W*(\d) +(\S+) +assistant", ran.out, re.M)  # newest first: the two new ones, then it
    assert listed == [("1", made[1]), ("2", made[0]), ("3", existing)]
    assert re.search(rf"^(?:you> )?conversation {existing} agent", ran.out, re.M)  # /switch 3
    assert "error: not_found" in ran.out  # /switch to an unknown id: said, and the prompt goes on
    assert "unknown command /bogus" in ran.out
    last = await agentbus("chat", "--last")
    assert last.code == 0 and re.search(rf"^conversation {made[1]} agent", last.out, re.M)
    unknown = await agentbus("chat", "--conversation", "0193d1a2-0000-7000-8000-000000000000")
    assert unknown.code == 1 and "error: not_found" in unknown.err


async def test_chat_keeps_escape_sequences_from_the_model_off_the_terminal(
    start_platform: Start, agentbus: Agentbus, tmp_path: Path
) -> None:
    platform = await start_platform(replying(lambda messages, info: "plain \x1b]0;owned\x07 and \x1b[2J clear"))
    agentbus.target(platform.url, platform.key, tmp_path)
    ran = await agentbus("chat", stdin="hello\n")
    assert ran.code == 0 and "plain ]0;owned and [2J clear" in ran.out and "\x1b" not in ran.out


class Proxy:
    """A TCP proxy in front of the gateway whose `cut()` drops every open connection, as a network would."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_chat_resumes_a_dropped_stream_without_repeating_a_token(
    start_platform: Start, agentbus: Agentbus, tmp_path: Path
) -> None:
    gate = Gate(["one ", "two "], ["three ", "four"])
    platform = await start_platform(gate.model())
    proxy = Proxy(int(platform.url.rsplit(":", 1)[1]))
    agentbus.target(await proxy.start(), platform.key, tmp_path)
    try:
        chatting = agentbus.start("chat", stdin="count\n")
        await wait_until(
            lambda: _true(gate.reached.is_set() and "one two" in agentbus.output()), what="the first words"
        )
        proxy.cut()  # mid-reply: the model waits at the gate
        await wait_until(lambda: _true("resuming" in agentbus.output()), what="the chat to notice")
        gate.opened.set()
        assert await asyncio.wait_for(chatting, 60) == 0
    finally:
        await proxy.stop()
    out = agentbus.output()
    assert "one two " in out and out.count("one") == 1 and out.count("two") == 1
    assert out.count("three") == 1 and out.count("four") == 1 and out.index("two") < out.index("three four")
    assert proxy.connections >= 2  # the turn's stream was opened again


async def _true(value: bool) -> bool:
    return value


def test_chat_without_a_key_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AGENTBUS_KEY", raising=False)
    monkeypatch.setenv("AGENTBUS_HOME", str(tmp_path))
    assert cli.main(["chat"]) == 2
    assert "AGENTBUS_KEY" in capsys.readouterr().err


def printed_json(out: str) -> Any:
    """The JSON a `--json` command printed (the in-process platform's log lines share stdout)."""
    start = 0 if out.startswith(("{", "[")) else min(i + 1 for i in (out.find("\n{"), out.find("\n[")) if i >= 0)
    return json.JSONDecoder().raw_decode(out[start:])[0]


async def test_status_tables_and_json(start_platform: Start, agentbus: Agentbus, tmp_path: Path) -> None:
    platform = await start_platform()
    agentbus.target(platform.url, platform.key, tmp_path)
    ran = await agentbus("status")
    assert ran.code == 0, ran.err
    assert re.search(r"conversation\W+ok", ran.out) and re.search(r"executor\W+ok", ran.out)
    assert "model breakers" in ran.out and re.search(r"AB_CONVERSATION_CMD\W+conversation-cmd\W+0", ran.out)
    assert re.search(r"conversation\W+ok\W+\S+\W+ok\W+postgres: ok", ran.out)  # a replica and its checks
    raw = await agentbus("status", "--json")
    assert raw.code == 0 and set(printed_json(raw.out)["actors"]) == {"conversation", "executor"}


async def test_status_exits_1_when_an_actor_is_down(start_platform: Start, agentbus: Agentbus, tmp_path: Path) -> None:
    platform = await start_platform(actors=("conversation", "executor", "scheduler"))  # no scheduler runs
    agentbus.target(platform.url, platform.key, tmp_path)
    ran = await agentbus("status")
    assert ran.code == 1 and re.search(r"scheduler\W+down", ran.out) and re.search(r"executor\W+ok", ran.out)


async def test_tasks_list_show_and_follow_a_delegation(
    start_platform: Start, agentbus: Agentbus, tmp_path: Path
) -> None:
    platform = await start_platform(background=True)
    agentbus.target(platform.url, platform.key, tmp_path)
    async with platform.client() as client:
        made = await client.post("/v1/tasks", json={"task_type": "delegation", "prompt": "summarise the week"})
        task_id = made.json()["id"]
    followed = await agentbus("tasks", "follow", task_id)  # a delegation runs once: following ends with it
    assert followed.code == 0, followed.err
    assert re.search(r"^task run \S+ completed \(fired by \w+\): ", followed.out, re.M)
    listed = await agentbus("tasks", "list")
    assert listed.code == 0 and task_id in listed.out and "summarise the week" in listed.out
    shown = await agentbus("tasks", "show", task_id)
    assert shown.code == 0 and "summarise the week" in shown.out and "completed" in shown.out
    raw = await agentbus("tasks", "list", "--json")
    assert [t["id"] for t in printed_json(raw.out)["tasks"]] == [task_id]
    missing = await agentbus("tasks", "show", "0193d1a2-0000-7000-8000-000000000000")
    assert missing.code == 1 and "error: not_found" in missing.err
    async with platform.client() as client:  # a disabled task that never ran: nothing to wait for
        body = {"task_type": "scheduled", "prompt": "yearly", "schedule_expression": "0 0 1 1 *"}
        idle = (await client.post("/v1/tasks", json=body)).json()["id"]
        assert (await client.post(f"/v1/tasks/{idle}/disable")).status_code == 200
    quiet = await agentbus("tasks", "follow", idle)
    assert quiet.code == 0 and "has no runs and fires no more" in quiet.out, quiet.err


async def test_runs_follow_streams_a_running_turn_then_show_and_list(
    start_platform: Start, agentbus: Agentbus, tmp_path: Path
) -> None:
    gate = Gate(["slow ", "and "], ["steady"])
    platform = await start_platform(gate.model())
    agentbus.target(platform.url, platform.key, tmp_path)
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        url = f"/v1/conversations/{conversation_id}/messages"
        async with aconnect_sse(client, "POST", url, json={"message": "go", "stream": True}) as source:
            async for sse in source.aiter_sse():
                run_id = json.loads(sse.data)["run_id"]
                break  # the turn goes on without this client
    following = agentbus.start("runs", "follow", run_id)
    await wait_until(lambda: _true(gate.reached.is_set() and "slow and" in agentbus.output()), what="the tokens")
    gate.opened.set()
    assert await asyncio.wait_for(following, 60) == 0
    out = agentbus.output()
    assert out.count("slow and steady") == 1
    shown = await agentbus("runs", "show", run_id)
    assert shown.code == 0 and "completed" in shown.out and run_id in shown.out
    listed = await agentbus("runs", "list", "--conversation", conversation_id)
    assert listed.code == 0 and run_id in listed.out
    raw = await agentbus("runs", "show", run_id, "--json")
    assert printed_json(raw.out)["status"] == "completed"


async def test_research_follow_shows_progress_until_the_job_ends(
    start_platform: Start, agentbus: Agentbus, tmp_path: Path
) -> None:
    platform = await start_platform(Researchers().model(), background=True)
    agentbus.target(platform.url, platform.key, tmp_path)
    async with platform.client() as client:
        job_id = (await client.post("/v1/research", json={"question": "Which energy sources exist?"})).json()["id"]
    followed = await agentbus("research", "follow", job_id)
    assert followed.code == 0, followed.err
    out = followed.out
    assert "phase planning" in out and "phase researching" in out and "phase synthesizing" in out
    assert f"✓ {job_id}-plan completed" in out and f"✓ {job_id}-report completed" in out
    assert f"research {job_id} completed" in out
    shown = await agentbus("research", "show", job_id)
    assert shown.code == 0 and "Energy sources" in shown.out
    listed = await agentbus("research", "list", "--json")
    assert [j["id"] for j in printed_json(listed.out)["jobs"]] == [job_id]


async def test_dlq_list_show_replay_and_discard(start_platform: Start, agentbus: Agentbus, tmp_path: Path) -> None:
    platform = await start_platform()
    agentbus.target(platform.url, platform.key, tmp_path)
    subject = subjects.conversation_command("t1", "0193d1a2-0000-7000-8000-000000000001")
    await platform.bus.js.publish(subject, b"not json at all", headers=Trace(tenant="t1").headers())
    async with platform.client() as client:

        async def letters() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (await client.get("/v1/dead-letters")).json()["dead_letters"]
            return found

        await wait_until(lambda: _nonempty(letters()), what="the dead letter")
        first = (await letters())[0]["id"]
        status = await agentbus("status")  # the tenant's dead letters per actor
        assert re.search(r"^\W*conversation\W+1\W*$", status.out, re.M), status.out
        listed = await agentbus("dlq", "list")
        assert listed.code == 0 and str(first) in listed.out and "undecodable" in listed.out
        shown = await agentbus("dlq", "show", str(first), "--json")
        assert printed_json(shown.out)["subject"] == subject
        replayed = await agentbus("dlq", "replay", str(first))
        assert replayed.code == 0 and f"replayed {first} to {subject}" in replayed.out
        await wait_until(lambda: _nonempty(letters()), what="the replayed command to be dead-lettered again")
        again = (await letters())[0]["id"]
        assert again != first
        caught_up = await agentbus("dlq", "follow", "--after", str(first), "--count", "1")
        assert caught_up.code == 0 and f"dead letter {again} conversation {subject}: undecodable" in caught_up.out
        following = agentbus.start("dlq", "follow", "--actor", "conversation", "--after", str(again), "--count", "1")
        await platform.bus.js.publish(subject, b"still not json", headers=Trace(tenant="t1").headers())
        assert await asyncio.wait_for(following, 60) == 0
        (latest,) = [d["id"] for d in await letters() if d["id"] > again]
        assert f"dead letter {latest} conversation" in agentbus.output()
        await agentbus("dlq", "discard", str(latest))
        discarded = await agentbus("dlq", "discard", str(again))
        assert discarded.code == 0 and await letters() == []
    gone = await agentbus("dlq", "replay", str(first))
    assert gone.code == 1 and "error: not_found" in gone.err


async def _nonempty(found: Awaitable[list[dict[str, Any]]]) -> bool:
    return bool(await found)


def test_a_command_without_its_action_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["runs"])
    assert exited.value.code == 2


class Terminal:
    """`agentbus ARGV` as a subprocess on a pseudo-terminal: what a person at a terminal sees and types."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bus.cli", *argv], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT
        )
        os.close(slave)
        self.seen = b""

    async def read_until(self, text: str, timeout: float = 30.0) -> str:
        async def arrived() -> bool:
            ready, _, _ = select.select([self.master], [], [], 0)
            if ready:
                with contextlib.suppress(OSError):  # EIO once the child has exited
                    self.seen += os.read(self.master, 65536)
            return text in self.screen()

        await wait_until(arrived, timeout=timeout, what=f"{text!r} on the terminal")
        return self.screen()

    def screen(self) -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.seen.decode(errors="replace")).replace("\r", "")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


async def test_chat_in_a_real_terminal(start_platform: Start, tmp_path: Path) -> None:
    platform = await start_platform(replying(lambda messages, info: "hello from the gateway"))
    env = {
        **os.environ,
        "AGENTBUS_URL": platform.url,
        "AGENTBUS_KEY": platform.key,
        "AGENTBUS_HOME": str(tmp_path),
        "TERM": "xterm-256color",
    }
    terminal = Terminal(["chat"], env)
    try:
        await terminal.read_until("you>")
        terminal.type("hi there\n")
        await terminal.read_until("out tokens")
        terminal.type("\x04")  # Ctrl-D
        await wait_until(lambda: _true(terminal.proc.poll() is not None), timeout=15, what="the chat to exit")
        screen = terminal.screen()
    finally:
        terminal.close()
    assert terminal.proc.returncode == 0
    assert "agent> hello from the gateway" in screen and platform.key not in screen


async def test_ctrl_c_in_a_reply_cancels_its_run_and_the_chat_goes_on(start_platform: Start, tmp_path: Path) -> None:
    gate = Gate(["slow "], ["never shown"])
    platform = await start_platform(gate.model())
    env = {**os.environ, "AGENTBUS_URL": platform.url, "AGENTBUS_KEY": platform.key, "AGENTBUS_HOME": str(tmp_path)}
    terminal = Terminal(["chat"], env)
    try:
        conversation_id = (await terminal.read_until("you>")).split("new conversation", 1)[1].split()[0]
        terminal.type("take your time\n")
        await terminal.read_until("agent> slow")
        terminal.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        await terminal.read_until("interrupted: the run is cancelled")
        async with platform.client() as client:

            async def cancelled() -> bool:
                runs = (await client.get("/v1/runs", params={"conversation_id": conversation_id})).json()["runs"]
                return [r["status"] for r in runs] == ["cancelled"]

            await wait_until(cancelled, what="the run to be cancelled")
        terminal.type("\x04")
        await wait_until(lambda: _true(terminal.proc.poll() is not None), timeout=15, what="the chat to exit")
    finally:
        terminal.close()
    assert terminal.proc.returncode == 0 and "never shown" not in terminal.screen()
