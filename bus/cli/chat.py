"""`agentbus chat`: a terminal chat with an agent; replies stream token by token and survive a dropped connection.

A turn is `POST /v1/conversations/{id}/messages` with `stream: true` and an `Idempotency-Key` (docs/protocol.md,
"A turn"): its server-sent events carry the run's output, `id:` being the stream sequence. When the connection
drops, the turn's stream is opened again at `GET /v1/runs/{run_id}/events` with `Last-Event-ID`, so every token
is shown once; dropped before the first event (no run id yet), the same POST is sent again, and the gateway
answers the same turn's stream from the start (the already-shown events are skipped by id).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bus.cli.api import Api, ApiFailure, printable, segment
from bus.cli.approvals import describe

__all__ = ["add_parser", "chat"]

TERMINAL = {"completed", "failed", "cancelled"}
HELP = "/new  a new conversation · /list  conversations · /switch N|ID · /quit (or Ctrl-D)"
SHOWN_RESULT = 200  # characters of a tool's result shown


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("chat", help="chat with an agent in the terminal (replies stream as they come)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--conversation", metavar="ID", help="continue this conversation (default: a new one)")
    which.add_argument("--last", action="store_true", help="continue the conversation last written to")
    parser.add_argument("--agent", help="the agent of a new conversation (default: the gateway's)")


@dataclass
class Session:
    api: Api
    console: Console
    agent: str | None
    conversation: str = ""
    mine: list[str] = field(default_factory=list)  # made in this session, for a gateway without GET /v1/conversations
    listed: list[str] = field(default_factory=list)  # the last /list, for /switch N

    async def open(self, conversation_id: str) -> None:
        found = await self.api.get(f"/v1/conversations/{segment(conversation_id)}")
        self.conversation = str(found["id"])
        agent = escape(printable(found.get("agent", "?")))
        self.console.print(f"[dim]conversation[/] {self.conversation} [dim]agent[/] {agent}")

    async def new(self) -> None:
        body = {"agent": self.agent} if self.agent else {}
        made = await self.api.call("POST", "/v1/conversations", body=body)
        self.conversation = str(made["id"])
        self.mine.append(self.conversation)
        agent = escape(printable(made.get("agent", "?")))
        self.console.print(f"[dim]new conversation[/] {self.conversation} [dim]agent[/] {agent}")

    async def switch(self, which: str) -> None:
        """To the Nth conversation of the last /list, or to the one with this id."""
        if which.isdigit() and 1 <= int(which) <= len(self.listed):
            which = self.listed[int(which) - 1]
        await self.open(which)

    async def latest(self) -> None:
        rows = await self._rows(1)
        if not rows:
            self.console.print("[dim]no conversation yet[/]")
            await self.new()
        else:
            await self.open(rows[0][0])

    async def _rows(self, limit: int) -> list[tuple[str, str, str, str]]:
        """Newest first: id, agent, title, messages (this session's alone where the gateway lists none)."""
        try:
            page = await self.api.get("/v1/conversations", limit=limit, pattern="chatbot")  # not tasks' or sidekicks
        except ApiFailure as e:
            if e.status not in (404, 405):
                raise
            return [(c, "", "", "") for c in reversed(self.mine)][:limit]
        return [
            (str(c["conversation_id"]), str(c.get("agent", "")), str(c.get("title") or ""), str(c["messages"]))
            for c in page["conversations"]
        ]

    async def list(self) -> None:
        rows = await self._rows(20)
        self.listed = [row[0] for row in rows]
        table = Table("", "", "conversation", "agent", "title", "messages", box=None, header_style="dim")
        for n, row in enumerate(rows, 1):
            current = "*" if row[0] == self.conversation else ""
            table.add_row(current, str(n), *(escape(printable(cell)) for cell in row))
        self.console.print(table)

    async def turn(self, message: str) -> None:
        view = TurnView(self.console)
        run_id: list[str] = []

        def resume() -> str | None:
            return f"/v1/runs/{run_id[0]}/events" if run_id else None

        def retrying(error: Exception) -> None:
            view.note(f"connection lost ({type(error).__name__}); resuming")

        events = self.api.events(
            f"/v1/conversations/{self.conversation}/messages",
            method="POST",
            body={"message": message, "stream": True},
            headers={"Idempotency-Key": f"chat-{uuid.uuid4()}"},
            resume=resume,
            is_end=lambda e: e.event in TERMINAL,
            on_retry=retrying,
        )
        try:
            async for event in events:
                data = json.loads(event.data) if event.data else {}
                if not run_id and data.get("run_id"):
                    run_id.append(str(data["run_id"]))
                view.show(event.event, data)
        except asyncio.CancelledError:  # Ctrl-C (asyncio.run cancels the main task): stop the reply, not the chat
            task = asyncio.current_task()
            if task is None or task.uncancel() > 0:
                raise
            await events.aclose()
            if run_id:
                await self.api.call("POST", f"/v1/runs/{run_id[0]}/cancel")
                view.note("interrupted: the run is cancelled")
            else:  # no event yet, so no run id to cancel: the message may have been taken
                view.note("interrupted before the reply began: the turn may still run (agentbus runs list)")
            return
        view.end()


class TurnView:
    """One reply as it streams: tokens as they come, a line for each tool call and its result."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.mid_line = False
        self.speaking = False
        self.said = False  # a token was shown (a run nobody streamed has none: its output comes at the end)

    def _line(self) -> None:
        if self.mid_line:
            self.console.print()
            self.mid_line = False

    def _raw(self, text: object, *, end: str = "\n", style: str | None = None) -> None:
        """The gateway's text as it is: no markup, no highlighting, no control characters, no wrapping."""
        self.console.print(printable(text), end=end, style=style, markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self._line()
        self.console.print(f"[dim]({escape(text)})[/]")
        self.speaking = False

    def show(self, kind: str, data: dict[str, Any]) -> None:
        match kind:
            case "delta":
                if not self.speaking:
                    self._line()
                    self.console.print("[bold green]agent>[/] ", end="")
                    self.speaking = True
                self._raw(data.get("text", ""), end="")
                self.mid_line = self.said = True
            case "tool_call":
                self._line()
                self.console.print(f"  [cyan]⚙ {escape(printable(data.get('tool_name')))}[/]", end="")
                self._raw(f"({data.get('args', '')})")
                self.speaking = False
            case "tool_result":
                content = printable(data.get("content", ""))
                shown = content if len(content) <= SHOWN_RESULT else content[:SHOWN_RESULT] + "…"
                self.console.print(f"  [dim]↳ {escape(printable(data.get('tool_name')))}:[/] ", end="")
                self._raw(shown, style="dim")
            case "accepted" if data.get("position"):
                self.note(f"queued behind {data['position']} turn(s)")
            case "started" if int(data.get("attempt", 1)) > 1:
                self.said = False
                self.note(f"the run restarted (attempt {data['attempt']}); its reply starts again")
            case "completed":
                self._line()
                if not self.said and data.get("output"):
                    self.console.print("[bold green]agent>[/] ", end="")
                    self._raw(data["output"])
                usage = data.get("usage") or {}
                self.console.print(
                    f"[dim]{data.get('model', '')} · {usage.get('input_tokens', 0)} in / "
                    f"{usage.get('output_tokens', 0)} out tokens[/]"
                )
            case "failed":
                self._line()
                error = data.get("error") or {}
                message = escape(printable(error.get("message")))
                self.console.print(f"[red]error: {error.get('code')}: {message}[/]", highlight=False)
            case "cancelled":
                self.note(f"cancelled: {printable(data.get('reason', ''))}")
            case "waiting":  # the run parked: it goes on once each call is decided (here or anywhere else)
                self._line()
                for approval in data.get("approvals") or []:
                    self.console.print(describe(approval), highlight=False, soft_wrap=True)
                if data.get("waits"):
                    self.console.print(f"  [dim]waiting for {len(data['waits'])} event(s)[/]")
                self.speaking = False
            case "approval_decided":
                approval = data.get("approval") or {}
                by = printable(approval.get("decided_by") or "")
                self.note(f"{printable(approval.get('tool_name'))} {printable(approval.get('status'))} by {by}")
            case _:
                pass

    def end(self) -> None:
        self._line()


def _prompt(console: Console) -> str:
    """A line from the user; Ctrl-C here raises KeyboardInterrupt at once (asyncio.run's own handler would
    only cancel the main task, which waits at this blocking read until Enter)."""
    if threading.current_thread() is not threading.main_thread():
        return console.input("[bold]you>[/] ")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return console.input("[bold]you>[/] ")
    finally:
        signal.signal(signal.SIGINT, previous)


async def chat(api: Api, console: Console, args: argparse.Namespace, read_line: Callable[[], str] | None = None) -> int:
    """The prompt loop; Ctrl-D, Ctrl-C or /quit ends it (Ctrl-C in a reply cancels its run). A conversation
    is picked with --conversation, --last or /list then /switch N, else made new."""
    ask = read_line or (lambda: _prompt(console))
    session = Session(api, console, args.agent)
    if args.conversation:
        await session.open(args.conversation)
    elif args.last:
        await session.latest()
    else:
        await session.new()
    console.print(f"[dim]{HELP}[/]")
    while True:
        try:
            line = ask().strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        if not line:
            continue
        command, _, rest = line.partition(" ")
        try:
            match command:
                case "/quit" | "/exit":
                    return 0
                case "/new":
                    await session.new()
                case "/list":
                    await session.list()
                case "/switch" if rest.strip():
                    await session.switch(rest.strip())
                case "/help" | "/switch":
                    console.print(f"[dim]{HELP}[/]")
                case _ if command.startswith("/") and len(command) > 1 and " " not in command:
                    console.print(f"[dim]unknown command {escape(command)}; {HELP}[/]", highlight=False)
                case _:
                    await session.turn(line)
        except ApiFailure as e:  # a turn refused (409 busy, 429 ...) or an unknown id: say so, keep the prompt
            console.print(f"[red]error: {e.code}: {escape(e.message)}[/]", highlight=False)
