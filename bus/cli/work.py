"""`agentbus tasks | runs | research | dlq`: list, show, follow; `dlq replay | discard`. `--json` prints the JSON.

Lists read the gateway's newest-first pages (`?limit=&after=`, `next_after` says where the next begins).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from bus.cli import follow as cli_follow
from bus.cli.api import Api, print_json, printable, segment

__all__ = ["NOUNS", "add_parsers", "work"]

SHORT = 60  # characters of a prompt, question or output in a list


def _short(value: object) -> str:
    text = "" if value is None else printable(value).replace("\n", " ")
    return escape(text if len(text) <= SHORT else text[: SHORT - 1] + "…")


def _when(value: object) -> str:
    return "" if not value else str(value)[:19].replace("T", " ")


def _status(value: object) -> str:
    colour = {"completed": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}.get(str(value))
    return f"[{colour}]{value}[/]" if colour else escape(str(value or ""))


def _tokens(usage: object) -> str:
    if not isinstance(usage, dict):
        return ""
    return f"{usage.get('input_tokens', 0)}/{usage.get('output_tokens', 0)}"


Column = tuple[str, Callable[[dict[str, Any]], str]]


@dataclass(frozen=True)
class Noun:
    name: str
    path: str  # the collection: GET path lists, GET path/ID shows
    items: str  # the list answer's key
    columns: tuple[Column, ...]
    filters: tuple[tuple[str, str], ...] = ()  # (option, query parameter)


NOUNS = {
    "tasks": Noun(
        "tasks",
        "/v1/tasks",
        "tasks",
        (
            ("id", lambda t: escape(t["id"])),
            ("type", lambda t: escape(t["task_type"])),
            ("agent", lambda t: escape(t["agent"])),
            ("enabled", lambda t: "yes" if t.get("enabled") else "[yellow]no[/]"),
            ("next run", lambda t: _when(t.get("next_run_at"))),
            ("prompt", lambda t: _short(t.get("prompt"))),
        ),
        (("type", "task_type"), ("enabled", "enabled")),
    ),
    "runs": Noun(
        "runs",
        "/v1/runs",
        "runs",
        (
            ("id", lambda r: escape(r["id"])),
            ("agent", lambda r: escape(r["agent"])),
            ("status", lambda r: _status(r["status"])),
            ("model", lambda r: escape(r.get("model") or "")),
            ("tokens in/out", lambda r: _tokens(r.get("usage"))),
            ("created", lambda r: _when(r.get("created_at"))),
        ),
        (
            ("status", "status"),
            ("agent", "agent"),
            ("task", "task_id"),
            ("conversation", "conversation_id"),
            ("parent", "parent_run_id"),
        ),
    ),
    "research": Noun(
        "research",
        "/v1/research",
        "jobs",
        (
            ("id", lambda j: escape(j["id"])),
            ("status", lambda j: _status(j["status"])),
            ("sub-runs", lambda j: str((j.get("totals") or {}).get("subruns", 0))),
            ("tokens in/out", lambda j: _tokens(j.get("totals"))),
            ("created", lambda j: _when(j.get("created_at"))),
            ("question", lambda j: _short(j.get("question"))),
        ),
        (("status", "status"),),
    ),
    "dlq": Noun(
        "dlq",
        "/v1/dead-letters",
        "dead_letters",
        (
            ("id", lambda d: str(d["id"])),
            ("actor", lambda d: escape(str(d.get("actor")))),
            ("subject", lambda d: escape(str(d.get("subject")))),
            ("deliveries", lambda d: str(d.get("deliveries", ""))),
            ("reason", lambda d: _short(d.get("reason"))),
            ("when", lambda d: _when(d.get("dead_lettered_at"))),
        ),
        (("actor", "actor"),),
    ),
}
HELPS = {
    "tasks": "tasks: list, show, follow (its runs as they start and end)",
    "runs": "runs: list, show (with its tree), follow (its output as it streams)",
    "research": "research jobs: list, show (with the report), follow (phases, sub-runs, tokens)",
    "dlq": "dead letters: list, show, follow (new ones as they come), replay, discard",
}


def add_parsers(commands: Any) -> None:
    for noun in NOUNS.values():
        actions = commands.add_parser(noun.name, help=HELPS[noun.name]).add_subparsers(
            dest="action", required=True, metavar="ACTION"
        )
        listing = actions.add_parser("list", help=f"the newest {noun.name} first")
        for option, _ in noun.filters:
            listing.add_argument(f"--{option}", help=f"only with this {option}")
        listing.add_argument("--limit", type=int, default=50, help="how many (default: %(default)s, at most 200)")
        listing.add_argument("--after", help="the page after this cursor (a list's `next_after`)")
        listing.add_argument("--json", action="store_true", help="print the gateway's JSON")
        show = actions.add_parser("show", help="one, in full")
        show.add_argument("id")
        show.add_argument("--json", action="store_true", help="print the gateway's JSON")
        if noun.name == "dlq":
            watch = actions.add_parser("follow", help="print each new dead letter as it comes (Ctrl-C stops)")
            watch.add_argument("--actor", help="only this actor's")
            watch.add_argument("--count", type=int, help="stop after this many")
            watch.add_argument("--after", type=int, help="those stored after this id (default: from now)")
            actions.add_parser("replay", help="publish it again to its subject; it leaves the DLQ").add_argument("id")
            actions.add_parser("discard", help="delete it").add_argument("id")
        else:
            follow = actions.add_parser("follow", help="watch it until it ends")
            follow.add_argument("id")


async def _list(api: Api, console: Console, noun: Noun, args: argparse.Namespace) -> int:
    params = {query: getattr(args, option) for option, query in noun.filters}
    page = await api.get(noun.path, limit=args.limit, after=args.after, **params)
    if args.json:
        print_json(page)
        return 0
    table = Table(header_style="bold", box=None)
    for header, _ in noun.columns:
        table.add_column(header)
    for item in page[noun.items]:
        table.add_row(*(cell(item) for _, cell in noun.columns))
    console.print(table if table.row_count else f"[dim]no {noun.name}[/]")
    if page.get("next_after"):
        console.print(f"[dim]more: --after {escape(str(page['next_after']))}[/]")
    return 0


def _fields(console: Console, item: dict[str, Any], skip: set[str]) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in item.items():
        if key in skip or value is None or value == [] or value == {}:
            continue
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        table.add_row(escape(printable(key)), escape(printable(shown)))
    console.print(table)


def _tree(node: dict[str, Any], tree: Tree | None = None) -> Tree:
    label = f"{escape(node.get('id', ''))} [dim]{escape(str(node.get('kind', '')))}[/]"
    if node.get("agent"):
        label += f" {escape(node['agent'])} {_status(node.get('status'))} {_tokens(node.get('usage'))}"
    branch = Tree(label) if tree is None else tree.add(label)
    for child in node.get("children") or []:
        _tree(child, branch)
    return branch


async def _show(api: Api, console: Console, noun: Noun, args: argparse.Namespace) -> int:
    item = await api.get(f"{noun.path}/{segment(args.id)}")
    if args.json:
        print_json(item)
        return 0
    match noun.name:
        case "tasks":
            _fields(console, item, {"last_runs"})
            runs = Table("task run", "status", "fired by", "started", "output", title="last runs", header_style="bold")
            for r in item.get("last_runs") or []:
                runs.add_row(
                    escape(r["id"]),
                    _status(r["status"]),
                    escape(str(r.get("fired_by"))),
                    _when(r.get("started_at")),
                    _short(r.get("output") or r.get("error")),
                )
            console.print(runs)
        case "runs":
            _fields(console, item, set())
            console.print(_tree(await api.get(f"/v1/runs/{segment(args.id)}/tree")))
        case "research":
            _fields(console, item, {"subruns", "report", "citations"})
            subruns = Table("sub-run", "kind", "status", "tokens in/out", "question", header_style="bold")
            for s in item.get("subruns") or []:
                subruns.add_row(
                    escape(s["run_id"]),
                    escape(s["kind"]),
                    _status(s["status"]),
                    _tokens(s.get("usage")),
                    _short(s.get("question")),
                )
            console.print(subruns)
            if item.get("report"):
                console.print(Markdown(printable(item["report"])))
        case _:
            _fields(console, item, set())
    return 0


async def work(api: Api, console: Console, args: argparse.Namespace) -> int:
    noun = NOUNS[args.command]
    match args.action:
        case "list":
            return await _list(api, console, noun, args)
        case "show":
            return await _show(api, console, noun, args)
        case "replay":
            replayed = await api.call("POST", f"/v1/dead-letters/{segment(args.id)}/replay")
            subject = escape(str(replayed.get("subject")))
            console.print(f"replayed {escape(args.id)} to {subject} as stream message {replayed.get('replayed_as')}")
            return 0
        case "discard":
            await api.call("DELETE", f"/v1/dead-letters/{segment(args.id)}")
            console.print(f"discarded {escape(args.id)}")
            return 0
        case "follow" if args.command == "dlq":
            return await cli_follow.dead_letters(api, console, actor=args.actor, count=args.count, after=args.after)
        case "follow":
            return await cli_follow.follow(api, console, args.command, args.id)
    return 2
