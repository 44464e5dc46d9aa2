"""Rate-limit benchmark: one key flooding the gateway at 5x its rate, and another tenant beside it.

The gateway (`AGENTBUS_RATE_LIMIT` = RATE requests per minute per key) and the conversation actor run as
processes. The flood (tenant A, one key) comes from its own process, paced at 5x RATE, so it does not share
this process's event loop with the measured client; the measured client (tenant B, its own key, under the
rate) asks for a conversation that does not exist, a request that crosses the bus to the conversation
actor and its PostgreSQL. Printed: how many of A's requests were admitted against the bound
`rate x time + burst` (GCRA with a burst of the whole quota), and B's latency alone and beside the flood,
with the ratio of the p99s (issue 11's target: below 1.10).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

from bus import keys
from bus.client import Bus
from bus.config import BusConfig
from tests.bench.harness import LATENCY, Infra, Latency, Report, Scale, free_port, processes, wait_http

__all__ = ["run"]

ACTORS = ("conversation",)
RATE = 1200  # per key per minute: 20 a second
FLOOD = 5  # times the rate
MEASURED_PER_S = 10  # tenant B, under its key's rate


async def _paced(client: httpx.AsyncClient, path: str, per_s: float, seconds: float, workers: int) -> dict[str, int]:
    """`per_s` requests a second for `seconds`, from `workers` tasks; the count of each status."""
    statuses: dict[str, int] = {}
    start = time.perf_counter()
    total = int(per_s * seconds)

    async def worker(index: int) -> None:
        for n in range(index, total, workers):
            delay = start + n / per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = str((await client.get(path)).status_code)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return statuses


async def _flood(base: str, key: str, per_s: float, seconds: float) -> None:
    """The flood, in its own process: prints its statuses' counts as JSON."""
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits) as client:
        started = time.perf_counter()
        statuses = await _paced(client, "/v1/conversations/none", per_s, seconds, workers=32)
        print(json.dumps({"statuses": statuses, "seconds": time.perf_counter() - started}), flush=True)


async def _measured(client: httpx.AsyncClient, seconds: float) -> Latency:
    samples: list[float] = []
    start = time.perf_counter()
    for n in range(int(MEASURED_PER_S * seconds)):
        delay = start + n / MEASURED_PER_S - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        answer = await client.get("/v1/conversations/none")
        samples.append(time.perf_counter() - t0)
        assert answer.status_code == 404, answer.text
    return Latency(tuple(samples), time.perf_counter() - start)


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    seconds = scale.idle_s * 3  # 30 s (3 s in a smoke run)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = infra.env(AGENTBUS_PORT=str(port), AGENTBUS_ACTORS=",".join(ACTORS), AGENTBUS_RATE_LIMIT=str(RATE))
    commands = {name: ["-m", f"actors.{name}"] for name in ACTORS} | {"gateway": ["-m", "gateway"]}
    bus = await Bus.connect(BusConfig(servers=(infra.nats.url,)))
    flooder = await keys.create_key(bus, tenant="bench-flood", name="bench")
    measured = await keys.create_key(bus, tenant="bench-other", name="bench")
    await bus.close()
    with processes(commands, env, logs) as children:
        await wait_http(f"{base}/health", timeout=60, children=children)
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {measured}"}) as client:
            for _ in range(scale.warmup):
                await client.get("/v1/conversations/none")
            alone = await _measured(client, seconds)
            flood = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.bench.ratelimit", base, flooder, str(RATE / 60 * FLOOD), str(seconds),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            await asyncio.sleep(0.5)  # the flood's start-up (imports) is not beside the measurement
            beside = await _measured(client, seconds)
            out, _ = await flood.communicate()
    flooded = json.loads(out.decode().strip().splitlines()[-1])
    statuses: dict[str, int] = flooded["statuses"]
    flood_s: float = flooded["seconds"]
    admitted = sum(n for status, n in statuses.items() if status != "429")
    sent = sum(statuses.values())
    bound = RATE / 60 * flood_s + RATE
    report.table(
        f"one key at {FLOOD}x its rate ({RATE}/min) for {flood_s:.1f} s",
        ("sent", "refused 429", "admitted", "bound: rate x time + burst", "admitted / bound"),
        [(sent, statuses.get("429", 0), admitted, f"{bound:.0f}", f"{admitted / bound:.2f}")],
    )
    ratio = beside.p99_ms / alone.p99_ms
    report.table(
        f"another tenant's request beside the flood ({MEASURED_PER_S}/s, ms)",
        ("path", *LATENCY, "p99 ratio"),
        [
            ("alone", *alone.cells(), ""),
            ("beside the flood", *beside.cells(), f"{ratio:.2f}"),
        ],
    )
    report.target("key at 5x its rate: admitted / (rate x time + burst)", f"{admitted / bound:.2f}", "<= 1", None)
    report.target("another tenant's p99 beside the flood / alone", f"{ratio:.2f}", "< 1.10", ratio < 1.10)


if __name__ == "__main__":  # the flood's own process: base url, key, requests per second, seconds
    asyncio.run(_flood(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
