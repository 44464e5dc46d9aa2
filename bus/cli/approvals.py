"""`agentbus approvals | approve ID | deny ID --reason R`: the tool calls waiting for a person, and deciding one.

The gateway's `/v1/approvals` (docs/approvals.md): the decision is the key's (the gateway records its id).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bus.cli.api import Api, UsageFailure, print_json, printable, segment

__all__ = ["COMMANDS", "add_parsers", "approvals", "describe"]

COMMANDS = ("approvals", "approve", "deny")
SHOWN_ARGS = 80  # characters of a call's arguments in the list


def add_parsers(commands: Any) -> None:
    listing = commands.add_parser("approvals", help="the tool calls waiting for approval (--all: decided ones too)")
    listing.add_argument("--all", action="store_true", help="every approval, decided or not")
    listing.add_argument("--run", metavar="RUN_ID", help="only this run's")
    listing.add_argument("--json", action="store_true", help="print the gateway's JSON")
    approve = commands.add_parser("approve", help="approve a tool call: it runs, and its run goes on")
    approve.add_argument("id", help="the approval's id (`agentbus approvals` lists them)")
    approve.add_argument(
        "--arguments", metavar="JSON", help="run the tool with these arguments instead (recorded as an edit)"
    )
    deny = commands.add_parser("deny", help="deny a tool call: the model is told the reason instead")
    deny.add_argument("id", help="the approval's id (`agentbus approvals` lists them)")
    deny.add_argument("--reason", required=True, help="what the model is told")


def describe(approval: dict[str, Any]) -> str:
    """One call waiting, as two lines of markup: its tool and arguments, then the commands that decide it."""
    args = printable(approval.get("args", ""))
    shown = args if len(args) <= SHOWN_ARGS else args[: SHOWN_ARGS - 1] + "…"
    approval_id = escape(printable(approval.get("id")))
    return (
        f"  [yellow]⏸ {escape(printable(approval.get('tool_name')))}[/]({escape(shown)}) waits for approval\n"
        f"    [bold]agentbus approve {approval_id}[/]  [dim]or[/]  agentbus deny {approval_id} --reason …"
    )


def _table(found: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold", box=None)
    for header in ("id", "status", "tool", "arguments", "agent", "expires"):  # the run: --json
        table.add_column(header, no_wrap=header in ("id", "status", "tool"), overflow="fold")
    for a in found:
        args = printable(a.get("args", ""))
        table.add_row(
            escape(printable(a["id"])),
            escape(printable(a.get("status"))),
            escape(printable(a.get("tool_name"))),
            escape(args if len(args) <= SHOWN_ARGS else args[: SHOWN_ARGS - 1] + "…"),
            escape(printable(a.get("agent"))),
            str(a.get("expires_at") or "")[:19].replace("T", " "),
        )
    return table


async def _decide(api: Api, console: Console, approval_id: str, body: dict[str, Any]) -> int:
    decided = await api.call("POST", f"/v1/approvals/{segment(approval_id)}", body=body)
    status = escape(printable(decided.get("status")))
    run = escape(printable(decided["run_id"]))
    console.print(f"{escape(printable(decided['id']))} {status} (run {run} goes on once all its calls are decided)")
    return 0


async def approvals(api: Api, console: Console, args: argparse.Namespace) -> int:
    match args.command:
        case "approvals":
            page = await api.get("/v1/approvals", status="all" if args.all else "pending", run_id=args.run)
            if args.json:
                print_json(page)
                return 0
            found = page["approvals"]
            console.print(_table(found) if found else f"[dim]no {'' if args.all else 'pending '}approvals[/]")
            return 0
        case "approve" if args.arguments is not None:
            try:
                arguments = json.loads(args.arguments)
            except ValueError as e:
                raise UsageFailure(f"--arguments is not JSON: {e}") from None
            if not isinstance(arguments, dict):
                raise UsageFailure("--arguments must be a JSON object (the tool's arguments by name)")
            return await _decide(api, console, args.id, {"decision": "edit", "arguments": arguments})
        case "approve":
            return await _decide(api, console, args.id, {"decision": "approve"})
        case "deny":
            return await _decide(api, console, args.id, {"decision": "deny", "reason": args.reason})
    return 2
