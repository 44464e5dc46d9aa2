"""The baselines' workers, each its own process.

python -m tests.bench.workers jetstream   # raw JetStream: pull, ack, reply (NATS_URL)
arq tests.bench.workers.ArqWorker        # ARQ with Redis (REDIS_PORT, ARQ_POLL_DELAY)
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

import uvloop
from arq.connections import RedisSettings
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from tests.bench.raw import raw_connect

STREAM = "BENCH_JOBS"


async def ensure_stream(js: Any) -> None:
    config = StreamConfig(
        name=STREAM, subjects=["bench.jobs.*"], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE
    )
    try:
        await js.add_stream(config)
    except Exception:
        await js.update_stream(config)


async def jetstream_worker() -> None:
    """The raw path the platform's dispatch is compared with: pull, ack, reply."""
    nc = await raw_connect(os.environ["NATS_URL"])
    js = nc.jetstream()
    await ensure_stream(js)
    sub = await js.pull_subscribe("bench.jobs.*", durable="bench-worker", stream=STREAM)
    while True:
        try:
            msgs = await sub.fetch(batch=64, timeout=5)
        except (TimeoutError, NatsTimeoutError):
            continue
        for msg in msgs:
            await msg.ack_sync()
            await nc.publish("bench.done." + msg.subject.rsplit(".", 1)[1], b"")


async def noop(ctx: dict[str, Any]) -> None:
    """An ARQ job that does nothing."""


class ArqWorker:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = RedisSettings(port=int(os.environ.get("REDIS_PORT", "6379")))
    poll_delay = float(os.environ.get("ARQ_POLL_DELAY", "0.5"))  # ARQ's default is 0.5 s
    max_jobs = 64


if __name__ == "__main__" and sys.argv[1:] == ["jetstream"]:
    uvloop.run(jetstream_worker())
