"""What every benchmark shares: servers on loopback in a temp dir, child processes, percentiles."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bus.embedded import EmbeddedNats, EmbeddedPostgres, free_port

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["Infra", "Latency", "measure", "print_table", "processes", "wait_http"]


@dataclass(frozen=True)
class Latency:
    """Per-operation latencies (seconds) of one measured run and its wall time."""

    samples: tuple[float, ...]
    wall_s: float

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples) * 1000

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000

    @property
    def per_s(self) -> float:
        return len(self.samples) / self.wall_s


async def measure(op: Callable[[int], Awaitable[None]], *, total: int, concurrency: int, warmup: int = 20) -> Latency:
    """Run `op(worker)` `total` times from `concurrency` workers; `op` gets its worker's index."""
    for _ in range(warmup):
        await op(0)
    samples: list[float] = []
    remaining = total

    async def worker(index: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await op(index)
            samples.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return Latency(tuple(samples), time.perf_counter() - start)


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    print(f"\n{title}")
    print("  " + "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=False)))
    for row in rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))


@dataclass
class Infra:
    nats: EmbeddedNats
    postgres: EmbeddedPostgres
    home: Path

    def env(self, database: str = "postgres", **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "NATS_URL": self.nats.url,
            "DATABASE_URL": self.postgres.uri(database),
            "AGENTBUS_LOG_LEVEL": "WARNING",
            **extra,
        }


@contextmanager
def infra() -> Iterator[Infra]:
    """A nats-server (sync_interval: always, as `make run`) and a PostgreSQL in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="agentbus-bench-") as tmp:
        home = Path(tmp)
        nats = EmbeddedNats(home / "nats").start()
        pg = EmbeddedPostgres(home / "pg").start()
        try:
            yield Infra(nats, pg, home)
        finally:
            nats.stop()
            pg.stop()


@contextmanager
def processes(
    commands: Mapping[str, list[str]], env: Mapping[str, str], logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start each command as a child process; SIGTERM (then SIGKILL) all of them on exit."""
    children: list[subprocess.Popen[bytes]] = []
    try:
        for name, argv in commands.items():
            log = (logs / f"{name}.log").open("ab")
            children.append(subprocess.Popen([sys.executable, *argv], env=dict(env), cwd=ROOT, stdout=log, stderr=log))
        yield children
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_http(url: str, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready")


__all__ += ["cpu_seconds", "free_port", "infra"]
