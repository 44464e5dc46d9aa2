"""`make bench`: every benchmark in one run, same event loop policy (uvloop) for all, ending with
a summary against the targets. `make bench-smoke` (`--smoke`): every benchmark with tiny counts,
failing unless each one ran and printed its figures.

`python -m tests.bench [--smoke] [NAME ...]` runs the ones named (chat, background, research, history,
long_conversation, supervised, providers, tools, revocation, ratelimit, approvals, journal).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from tests.bench import (
    approvals,
    background,
    chat,
    history,
    journal,
    long_conversation,
    providers,
    ratelimit,
    research,
    revocation,
    supervised,
    tools,
)
from tests.bench.harness import FULL, SMOKE, Infra, Report, Scale, infra

Benchmark = Callable[[Infra, Path, Scale, Report], Awaitable[None]]
BENCHMARKS: dict[str, Benchmark] = {
    "chat": chat.run,
    "background": background.run,
    "research": research.run,
    "history": history.run,
    "long_conversation": long_conversation.run,
    "supervised": supervised.run,
    "providers": providers.run,
    "tools": tools.run,
    "revocation": revocation.run,
    "ratelimit": ratelimit.run,
    "approvals": approvals.run,
    "journal": journal.run,
}


async def main(names: list[str], scale: Scale) -> int:
    """0 when every benchmark ran (and, in a smoke run, printed figures that are numbers)."""
    report = Report()
    failed: list[str] = []
    started = time.perf_counter()
    with infra() as servers, tempfile.TemporaryDirectory(prefix="agentbus-bench-logs-") as tmp:
        logs = Path(tmp)
        print(f"nats {servers.nats.url}  postgres {servers.postgres.uri()}  logs {logs}", flush=True)
        for name in names:
            report.begin(name)
            t0 = time.perf_counter()
            try:
                await BENCHMARKS[name](servers, logs, scale, report)
            except Exception:  # the others still run; the run fails
                traceback.print_exc()
                failed.append(name)
                _tail_logs(logs)
            print(f"[{name}: {time.perf_counter() - t0:.1f} s]", flush=True)
        report.print_summary(verdicts=not scale.smoke)
    problems = [f"{name}: failed" for name in failed] + report.problems(names)
    print(f"[all: {time.perf_counter() - started:.1f} s]", flush=True)
    for problem in problems:
        print(f"bench: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _tail_logs(logs: Path, lines: int = 15) -> None:
    """The last lines of every child's log: the logs' directory goes away with the run."""
    for log in sorted(logs.glob("*.log")):
        tail = [line[:300] for line in log.read_text(errors="replace").splitlines()[-lines:]]
        if tail:
            print(f"--- {log.name} (last {len(tail)} lines)", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts; fail unless every benchmark printed")
    parser.add_argument("names", nargs="*", metavar="NAME", help="one of: " + ", ".join(BENCHMARKS))
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown}: choose from {sorted(BENCHMARKS)}")
    return args


if __name__ == "__main__":
    args = _args()
    chosen: list[str] = args.names or list(BENCHMARKS)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(asyncio.run(main(chosen, SMOKE if args.smoke else FULL)))
