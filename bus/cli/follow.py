"""`agentbus runs | research | tasks follow ID`: watch work until it ends.

A run: its output (`GET /v1/runs/{id}/events`), tokens as they stream. A research job: its events
(`GET /v1/research/{id}/events`) under a progress bar: the phase, sub-runs done of those known, tokens. Both
resume after a dropped connection with `Last-Event-ID`. A task: its runs (`GET /v1/tasks/{id}/runs`, read every
second: a task's runs stream no tokens), a line as each starts and ends, until the task fires no more.
`agentbus dlq follow`: each dead letter stored after it started (`GET /v1/dead-letters`, read every
second: dead letters are not on the event feed), until Ctrl-C or `--count` of them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bus.cli.api import Api, printable, segment
from bus.cli.chat import TERMINAL, TurnView

__all__ = ["dead_letters", "follow"]

TASK_POLL_S = 1.0
DLQ_POLL_S = 1.0
ENDED_TASK_RUNS = {"completed", "failed", "cancelled", "skipped"}


async def follow(api: Api, console: Console, noun: str, item_id: str) -> int:
    item_id = segment(item_id)
    match noun:
        case "runs":
            return await _run(api, console, item_id)
        case "research":
            return await _research(api, console, item_id)
        case "tasks":
            return await _task(api, console, item_id)
    return 2


async def _run(api: Api, console: Console, run_id: str) -> int:
    run = await api.get(f"/v1/runs/{run_id}")  # 404 before any stream
    console.print(f"[dim]run[/] {escape(run['id'])} [dim]agent[/] {escape(run['agent'])} [dim]{run['status']}[/]")
    view = TurnView(console)
    async for event in api.events(
        f"/v1/runs/{run_id}/events",
        is_end=lambda e: e.event in TERMINAL,
        on_retry=lambda e: view.note(f"connection lost ({type(e).__name__}); resuming"),
    ):
        view.show(event.event, json.loads(event.data) if event.data else {})
    view.end()
    return 0


async def _research(api: Api, console: Console, job_id: str) -> int:
    job = await api.get(f"/v1/research/{job_id}")
    console.print(f"[dim]research[/] {escape(job['id'])}: {escape(printable(job['question']))}")
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sub-runs · {task.fields[tokens]} tokens"),
        TimeElapsedColumn(),
        console=console,
    )
    started: set[str] = set()
    done: set[str] = set()
    known = len(job.get("subruns") or [])
    finished: dict[str, Any] = {}
    with progress:
        bar = progress.add_task(str(job["status"]), total=max(known, 1), tokens=_tokens(job.get("totals")))
        async for event in api.events(
            f"/v1/research/{job_id}/events",
            is_end=lambda e: e.event == "research_finished",
            on_retry=lambda e: progress.console.print(f"[dim](connection lost ({type(e).__name__}); resuming)[/]"),
        ):
            data = json.loads(event.data) if event.data else {}
            match event.event:
                case "phase":
                    depth = f" (round {data['depth']})" if data.get("depth") else ""
                    progress.update(bar, description=f"{data['status']}{depth}")
                    progress.console.print(f"phase {escape(str(data['status']))}{depth}")
                    known = len((await api.get(f"/v1/research/{job_id}")).get("subruns") or [])
                case "subrun_started":
                    started.add(data["run_id"])
                    question = f": {escape(printable(data['question']))}" if data.get("question") else ""
                    progress.console.print(f"  → {escape(data['run_id'])} [dim]{data['kind']}[/]{question}")
                case "subrun_finished":
                    done.add(data["run_id"])
                    progress.update(bar, tokens=_tokens(data.get("totals")))
                    progress.console.print(f"  ✓ {escape(data['run_id'])} {escape(str(data['status']))}")
                case "research_finished":
                    finished = data
                    progress.update(bar, description=str(data["status"]), tokens=_tokens(data.get("totals")))
            progress.update(bar, total=max(known, len(started), 1), completed=len(done))
    stopped = f", stopped by {finished['stopped_by']}" if finished.get("stopped_by") else ""
    error = f": {escape(printable(finished['error']))}" if finished.get("error") else ""
    console.print(f"research {escape(job_id)} {escape(str(finished.get('status')))}{stopped}{error}")
    console.print(f"[dim]the report: agentbus research show {escape(job_id)}[/]")
    return 0


def _tokens(totals: object) -> int:
    if not isinstance(totals, dict):
        return 0
    return int(totals.get("input_tokens", 0)) + int(totals.get("output_tokens", 0))


def _fires_again(task: dict[str, Any]) -> bool:
    """Whether the task can start another run by itself: a delegation runs once, a schedule until it has no
    next time, a trigger whenever its event comes."""
    if not task.get("enabled", True):
        return False
    match task.get("task_type"):
        case "delegation":
            return False
        case "scheduled":
            return task.get("next_run_at") is not None
    return True


async def _task(api: Api, console: Console, task_id: str) -> int:
    seen: dict[str, str] = {}
    with console.status(f"following task {escape(task_id)} (Ctrl-C stops)"):
        while True:
            task = await api.get(f"/v1/tasks/{task_id}")
            runs = (await api.get(f"/v1/tasks/{task_id}/runs", limit=50))["runs"]
            for run in reversed(runs):  # oldest first
                status = str(run["status"])
                if seen.get(run["id"]) == status:
                    continue
                seen[run["id"]] = status
                line = f"task run {escape(run['id'])} {escape(status)} [dim](fired by {run.get('fired_by')})[/]"
                if status in ENDED_TASK_RUNS and (run.get("output") or run.get("error")):
                    line += f": {escape(printable(run.get('output') or run.get('error')))}"
                console.print(line)
            ended = all(status in ENDED_TASK_RUNS for status in seen.values())  # (so with none at all)
            if ended and not _fires_again(task):
                if not seen:
                    console.print(f"task {escape(task_id)} has no runs and fires no more")
                return 0
            await asyncio.sleep(TASK_POLL_S)


async def dead_letters(
    api: Api, console: Console, *, actor: str | None, count: int | None, after: int | None = None
) -> int:
    """Print each dead letter stored after id `after` (default: from now on), oldest first, until `count` of
    them (or Ctrl-C)."""
    if after is None:  # from now: after the newest stored
        page = await api.get("/v1/dead-letters", limit=1, actor=actor)
        if page["dead_letters"]:
            after = int(page["dead_letters"][0]["id"])
        elif page.get("next_after") is not None:  # none of ours among the newest the gateway looked at
            after = int(page["next_after"]) - 1
        else:
            after = 0
    newest: int = after
    printed = 0
    with console.status(f"following dead letters{f' of {escape(actor)}' if actor else ''} (Ctrl-C stops)"):
        while count is None or printed < count:
            for letter in reversed(await _letters_after(api, actor, newest)):
                newest = max(newest, letter["id"])
                reason = escape(printable(str(letter.get("reason"))))
                where = f"[dim]{escape(str(letter.get('actor')))}[/] {escape(str(letter.get('subject')))}"
                console.print(f"dead letter {letter['id']} {where}: {reason}")
                printed += 1
                if count is not None and printed >= count:
                    return 0
            await asyncio.sleep(DLQ_POLL_S)
    return 0


async def _letters_after(api: Api, actor: str | None, newest: int) -> list[dict[str, Any]]:
    """The dead letters stored after id `newest`, newest first (the list's pages, read back to it)."""
    found: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page = await api.get("/v1/dead-letters", limit=200, actor=actor, after=after)
        found += [d for d in page["dead_letters"] if d["id"] > newest]
        after = page.get("next_after")  # the next page holds ids below it (a page may be empty, and go on)
        if after is None or after <= newest + 1:
            return found
