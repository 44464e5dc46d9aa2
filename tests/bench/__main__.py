"""`make bench`: every benchmark in one run, same event loop policy (uvloop) for all.

`python -m tests.bench chat`, `... background` or `... research` runs one of them.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import uvloop

from tests.bench import background, chat, research
from tests.bench.harness import infra

BENCHMARKS = {"chat": chat.run, "background": background.run, "research": research.run}


async def main(names: list[str]) -> None:
    with infra() as servers, tempfile.TemporaryDirectory(prefix="agentbus-bench-logs-") as logs:
        print(f"nats {servers.nats.url}  postgres {servers.postgres.uri()}  logs {logs}", flush=True)
        for name in names:
            await BENCHMARKS[name](servers, Path(logs))


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark {unknown}: choose from {sorted(BENCHMARKS)}")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main(chosen))
