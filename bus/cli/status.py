"""`agentbus status`: actors and their replicas, consumer backlogs, dead letters and model breakers, as tables.

From `GET /v1/status` (every replica of every actor, consumer backlogs, the tenant's dead letters); a gateway
without it answers from `GET /health` (one replica per actor, no backlogs). Exit 1 when something is down.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bus.cli.api import Api, ApiFailure, print_json

__all__ = ["add_parser", "status"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("status", help="actors, replicas, backlogs, dead letters, model breakers")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON")


def _ok(ok: object) -> str:
    return "[green]ok[/]" if ok else "[red]down[/]"


def _checks(checks: object) -> str:
    if not isinstance(checks, dict):
        return ""
    return escape(", ".join(f"{k}: {v}" for k, v in checks.items()))


async def _report(api: Api) -> tuple[dict[str, Any], bool]:
    """The status report, and whether it is the full one (`/v1/status`) or `/health`'s."""
    try:
        return await api.get("/v1/status"), True
    except ApiFailure as e:
        if e.status not in (404, 405):
            raise
    response = await api.http.get("/health")  # 503 still has the report
    if response.status_code not in (200, 503):
        raise ApiFailure.of(response.status_code, response.content)
    report: dict[str, Any] = response.json()
    return report, False


def _replicas(name: str, actor: dict[str, Any], full: bool) -> list[tuple[str, ...]]:
    if not full:  # /health: the one replica that answered the shared health request
        where = escape(str(actor.get("instance") or actor.get("error") or ""))
        return [(name, _ok(actor.get("ok")), where, _ok(actor.get("ok")), _checks(actor.get("checks")))]
    replicas = actor.get("replicas") or []
    if not replicas:
        return [(name, _ok(actor.get("ok")), "[red]no replica answers[/]", "", "")]
    return [
        (name, _ok(actor.get("ok")), escape(str(r.get("instance", ""))), _ok(r.get("ok")), _checks(r.get("checks")))
        for r in replicas
    ]


def render(console: Console, report: dict[str, Any], full: bool) -> None:
    actors = Table(title="actors", title_justify="left", header_style="bold")
    for column in ("actor", "health", "replica", "replica health", "checks"):
        actors.add_column(column)
    for name, actor in sorted((report.get("actors") or {}).items()):
        for row in _replicas(name, actor, full):
            actors.add_row(*row)
    console.print(actors)
    if full:
        backlog = Table(title="consumers", title_justify="left", header_style="bold")
        for column in ("stream", "consumer", "pending", "ack pending", "redelivered"):
            backlog.add_column(column, justify="right" if column not in ("stream", "consumer") else "left")
        for c in report.get("consumers") or []:
            backlog.add_row(
                escape(str(c.get("stream"))),
                escape(str(c.get("consumer"))),
                *(str(c.get(k, 0)) for k in ("pending", "ack_pending", "redelivered")),
            )
        console.print(backlog)
        dead = Table(title="dead letters", title_justify="left", header_style="bold")
        dead.add_column("actor")
        dead.add_column("letters", justify="right")
        for name, count in sorted((report.get("dead_letters") or {}).items()):
            if count:
                dead.add_row(escape(name), f"[red]{count}[/]")
        console.print(dead if dead.row_count else "[dim]dead letters: none[/]")
    else:
        console.print(f"[dim]nats {report.get('nats')} · jetstream {escape(str(report.get('jetstream')))}[/]")
        console.print("[dim](this gateway has no /v1/status: no backlogs or dead letters, one replica per actor)[/]")
    models = report.get("models") or {}
    breakers = Table(title="model breakers", title_justify="left", header_style="bold")
    for column in ("model", "state", "failures", "retry in", "last error"):
        breakers.add_column(column)
    for name, b in sorted((models.get("breakers") or {}).items()):
        state = str(b.get("state"))
        shown = {"open": "[red]open[/]", "half_open": "[yellow]half open[/]"}.get(state, escape(state))
        breakers.add_row(
            escape(name),
            shown,
            str(b.get("failures", 0)),
            f"{b.get('retry_after_s', 0)}s",
            escape(str(b.get("last_error") or "")),
        )
    if models.get("error"):
        console.print(f"[red]model breakers: {escape(str(models['error']))}[/]")
    elif breakers.row_count:
        console.print(breakers)
    else:
        console.print("[dim]model breakers: all closed[/]")


async def status(api: Api, console: Console, args: argparse.Namespace) -> int:
    report, full = await _report(api)
    if args.json:
        print_json(report)
    else:
        render(console, report, full)
    healthy = all(a.get("ok") for a in (report.get("actors") or {}).values()) and report.get("ok", True) is not False
    return 0 if healthy else 1
