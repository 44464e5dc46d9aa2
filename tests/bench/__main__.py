"""`make bench`: every benchmark in one run, same event loop policy (uvloop) for all."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import uvloop

from tests.bench import chat
from tests.bench.harness import infra


async def main() -> None:
    with infra() as servers, tempfile.TemporaryDirectory(prefix="agentbus-bench-logs-") as logs:
        print(f"nats {servers.nats.url}  postgres {servers.postgres.uri()}  logs {logs}", flush=True)
        await chat.run(servers, Path(logs))


if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(asyncio.run(main()))
