"""Rate-limit benchmark: one key flooding the gateway at 5x its rate, and another tenant beside it.

The gateway (`AGENTBUS_RATE_LIMIT` = `rate` requests per minute per key) and the conversation actor run as
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
from tests.bench.harness import LATENCY, Infra, Latency, Report, Scale, free_port, processes, wait_http

__all__ = ["run"]

ACTORS = ("conversation",)
PATH = "/v1/conversations/none"  # through the bus to the conversation actor and its PostgreSQL: 404
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


async def _flood(base: str, key: str, rate: int, seconds: float) -> None:
    """The flood, in its own process: first the key's whole burst as fast as it goes (so what is measured
    next is the key held to its rate), then FLOOD x its rate for `seconds`; prints both phases' counts."""
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits) as client:
        started = time.perf_counter()
        burst = await _paced(client, PATH, 10_000.0, rate / 10_000.0, workers=32)
        burst_s = time.perf_counter() - started
        print("started", flush=True)
        flood_started = time.perf_counter()
        flood = await _paced(client, PATH, rate / 60 * FLOOD, seconds, workers=32)
        flood_s = time.perf_counter() - flood_started
    print(json.dumps({"burst": burst, "burst_s": burst_s, "flood": flood, "flood_s": flood_s}), flush=True)


async def _measured(client: httpx.AsyncClient, seconds: float) -> Latency:
    samples: list[float] = []
    start = time.perf_counter()
    for n in range(int(MEASURED_PER_S * seconds)):
        delay = start + n / MEASURED_PER_S - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        answer = await client.get(PATH)
        samples.append(time.perf_counter() - t0)
        assert answer.status_code == 404, answer.text
    return Latency(tuple(samples), time.perf_counter() - start)


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    seconds = scale.idle_s * 3  # 30 s (3 s in a smoke run)
    rate = 120 if scale.smoke else 1200  # per key per minute
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = infra.env(AGENTBUS_PORT=str(port), AGENTBUS_ACTORS=",".join(ACTORS), AGENTBUS_RATE_LIMIT=str(rate))
    commands = {name: ["-m", f"actors.{name}"] for name in ACTORS} | {"gateway": ["-m", "gateway"]}
    bus = await Bus.connect(infra.bus_config())
    flooder = await keys.create_key(bus, tenant="bench-flood", name="bench")
    measured = await keys.create_key(bus, tenant="bench-other", name="bench")
    await bus.close()
    with processes(commands, env, logs) as children:
        await wait_http(f"{base}/health", timeout=60, children=children)
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {measured}"}) as client:
            for _ in range(scale.warmup):
                await client.get(PATH)
            alone = await _measured(client, seconds)
            flood = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.bench.ratelimit", base, flooder, str(rate), str(seconds),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert flood.stdout is not None
            await flood.stdout.readline()  # "started": its burst is spent, the flood at 5x its rate begins
            beside = await _measured(client, seconds)
            out, _ = await flood.communicate()
    found = json.loads(out.decode().strip().splitlines()[-1])
    rows: list[tuple[object, ...]] = []
    for phase, elapsed, burst in (
        ("burst, as fast as it goes", found["burst_s"], rate),
        ("5x its rate", found["flood_s"], 0),
    ):
        statuses: dict[str, int] = found["burst" if burst else "flood"]
        admitted = sum(n for status, n in statuses.items() if status != "429")
        bound = rate / 60 * elapsed + burst
        rows.append((phase, f"{elapsed:.1f}", sum(statuses.values()), statuses.get("429", 0), admitted, f"{bound:.0f}"))
    total_s = found["burst_s"] + found["flood_s"]
    admitted_all = sum(int(str(r[4])) for r in rows)
    bound_all = rate / 60 * total_s + rate
    rows.append(("both", f"{total_s:.1f}", "", "", admitted_all, f"{bound_all:.0f}"))
    report.table(
        f"one key ({rate}/min, burst {rate}) flooding",
        ("phase", "s", "sent", "refused 429", "admitted", "bound: rate x time + burst"),
        rows,
    )
    ratio = beside.p99_ms / alone.p99_ms
    report.table(
        f"another tenant's request beside the flood ({MEASURED_PER_S}/s, ms)",
        ("path", *LATENCY, "p99 ratio"),
        [("alone", *alone.cells(), ""), ("beside the flood at 5x its rate", *beside.cells(), f"{ratio:.2f}")],
    )
    report.target(
        "key at 5x its rate: admitted vs rate x time + burst", f"{admitted_all} vs {bound_all:.0f}", "<=",
        admitted_all <= bound_all,
    )  # fmt: skip
    report.target("another tenant's p99 beside the flood / alone", f"{ratio:.2f}", "< 1.10", ratio < 1.10)


if __name__ == "__main__":  # the flood's own process: base url, key, its rate per minute, seconds
    asyncio.run(_flood(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
