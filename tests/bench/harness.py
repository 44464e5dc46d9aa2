"""What every benchmark shares: servers on loopback in a temp dir, child processes, percentiles,
CPU per process from /proc, the scale of a run (full or smoke) and the report it prints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError

from bus.config import BusConfig
from bus.credentials import ensure_seeds
from bus.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from bus.permissions import server_authorization
from bus.secrets import ensure_secret_key
from bus.supervisor import ACTORS

ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "FULL",
    "LATENCY",
    "PLATFORM",
    "SMOKE",
    "CpuMeter",
    "Infra",
    "Latency",
    "Report",
    "Scale",
    "cpu_seconds",
    "free_port",
    "infra",
    "measure",
    "processes",
    "services_up",
    "wait_http",
]

# Every process `agentbus run` starts, from the one list it starts them from: a benchmark of "the
# platform" cannot miss an actor the gateway's /health waits for.
PLATFORM: dict[str, list[str]] = {
    **{name: ["-m", f"actors.{name}"] for name in ACTORS},
    "gateway": ["-m", "gateway"],
}


@dataclass(frozen=True)
class Scale:
    """How much work each benchmark does: `FULL` for `make bench`, `SMOKE` for `make bench-smoke`."""

    smoke: bool
    warmup: int = 20
    turns_c1: int = 300
    turns_c32: int = 1600
    streams: int = 16
    stream_solo: int = 30
    dispatch_c1: int = 200
    dispatch_c32: int = 800
    arq_default_c1: int = 20  # each takes about half a second
    schedules: int = 10_000
    one_shots: int = 300
    idle_s: float = 10.0
    research_jobs: int = 5
    research_jobs_small: int = 3
    supervised_c1: int = 100
    supervised_c32: int = 1600


FULL = Scale(smoke=False)
SMOKE = Scale(
    smoke=True,
    warmup=2,
    turns_c1=10,
    turns_c32=64,
    streams=4,
    stream_solo=3,
    dispatch_c1=10,
    dispatch_c32=64,
    arq_default_c1=2,
    schedules=50,
    one_shots=10,
    idle_s=1.0,
    research_jobs=1,
    research_jobs_small=1,
    supervised_c1=5,
    supervised_c32=64,
)


def _quantile(ordered: tuple[float, ...], q: float) -> float:
    """Nearest-rank quantile of sorted samples: p99.9 of 1,600 is the second largest."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


LATENCY = ("p50", "p99", "p99.9", "max")


@dataclass(frozen=True)
class Latency:
    """Per-operation latencies (seconds) of one measured run and its wall time."""

    samples: tuple[float, ...]
    wall_s: float
    ordered: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ordered", tuple(sorted(self.samples)))

    def ms(self, q: float) -> float:
        return _quantile(self.ordered, q) * 1000

    @property
    def p50_ms(self) -> float:
        return self.ms(0.5)

    @property
    def p99_ms(self) -> float:
        return self.ms(0.99)

    @property
    def p999_ms(self) -> float:
        return self.ms(0.999)

    @property
    def max_ms(self) -> float:
        return self.ordered[-1] * 1000

    @property
    def per_s(self) -> float:
        return len(self.samples) / self.wall_s

    def cells(self, digits: int = 2) -> tuple[str, str, str, str]:
        """p50, p99, p99.9 and max in ms, for the LATENCY columns of a table."""
        return (
            f"{self.p50_ms:.{digits}f}",
            f"{self.p99_ms:.{digits}f}",
            f"{self.p999_ms:.{digits}f}",
            f"{self.max_ms:.{digits}f}",
        )


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


_NOT_A_NUMBER = re.compile(r"(?<![a-z])x?-?(nan|inf)(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class SummaryRow:
    path: str
    measured: str
    target: str
    met: bool | None  # None: no verdict (a smoke run's tiny counts)


@dataclass
class Report:
    """Prints every table and keeps it, so a smoke run can check that each benchmark printed its
    figures, and `make bench` can end with one summary against the targets."""

    current: str = ""
    tables: dict[str, list[tuple[str, list[tuple[object, ...]]]]] = field(default_factory=dict)
    summary: list[SummaryRow] = field(default_factory=list)

    def begin(self, benchmark: str) -> None:
        self.current = benchmark
        self.tables.setdefault(benchmark, [])

    def table(self, title: str, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
        print(f"\n{title}")
        print("  " + "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=False)))
        for row in rows:
            print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))
        print(flush=True)
        self.tables.setdefault(self.current, []).append((title, rows))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Say how long a part of a benchmark took (start-ups included): where a run's time goes."""
        started = time.perf_counter()
        yield
        print(f"[{self.current} / {name}: {time.perf_counter() - started:.1f} s]", flush=True)

    def target(self, path: str, measured: str, target: str, met: bool | None) -> None:
        self.summary.append(SummaryRow(path, measured, target, met))

    def print_summary(self, *, verdicts: bool) -> None:
        def verdict(row: SummaryRow) -> str:
            if not verdicts or row.met is None:
                return "-"
            return "met" if row.met else "NOT MET"

        if not self.summary:  # the benchmarks run have no target of their own (history alone, say)
            return
        rows: list[tuple[object, ...]] = [(r.path, r.measured, r.target, verdict(r)) for r in self.summary]
        self.begin("summary")  # not a table of the last benchmark's
        self.table("summary: this run against the targets of issue 9", ("path", "measured", "target", ""), rows)

    def problems(self, expected: list[str]) -> list[str]:
        """What a smoke run must not end with: a benchmark without a table, an empty table, a figure
        that is not a number (nan, inf)."""
        found: list[str] = []
        for name in expected:
            tables = self.tables.get(name, [])
            if not tables:
                found.append(f"{name}: printed no table")
            for title, rows in tables:
                if not rows:
                    found.append(f"{name}: table {title!r} has no rows")
                bad = [str(c) for row in rows for c in row if _NOT_A_NUMBER.search(str(c))]
                if bad:
                    found.append(f"{name}: table {title!r} has figures that are not numbers: {bad[:3]}")
        return found


@dataclass
class Infra:
    nats: EmbeddedNats
    postgres: EmbeddedPostgres
    home: Path

    @property
    def credentials(self) -> Path:
        """The nkey seed of every process role: the nats-server is authenticated as under `make run`."""
        return self.home / "credentials"

    def bus_config(self, **overrides: Any) -> BusConfig:
        """How a benchmark's own connection reaches the nats-server (as admin unless a role is chosen)."""
        return BusConfig(servers=(self.nats.url,), credentials_dir=str(self.credentials), **overrides)

    def env(self, database: str = "postgres", **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "NATS_URL": self.nats.url,
            "AGENTBUS_NATS_CREDENTIALS": str(self.credentials),
            "DATABASE_URL": self.postgres.uri(database),
            "AGENTBUS_LOG_LEVEL": "WARNING",
            "AGENTBUS_RATE_LIMIT": "0",  # the benchmarks send far more than 100 requests a minute per key
            "AGENTBUS_WEBHOOK_RATE_LIMIT": "0",  # (the rate-limit one sets its own)
            # the quotas stay on (their checks are part of the cost) but far above what a benchmark makes
            **{f"AGENTBUS_QUOTA_{name}": "1000000000" for name in ("TASKS", "ACTIVE_SCHEDULES", "RESEARCH_JOBS")},
            **extra,
        }

    @property
    def nats_pid(self) -> int:
        assert self.nats.process is not None
        return self.nats.process.pid

    @property
    def postgres_pid(self) -> int:
        """The postmaster's pid, from its pid file (pgserver keeps the data directory as given)."""
        return int((self.postgres.data_dir / "postmaster.pid").read_text().split()[0])


@contextmanager
def infra() -> Iterator[Infra]:
    """A nats-server (sync_interval: always, as `make run`) and a PostgreSQL in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="agentbus-bench-") as tmp:
        home = Path(tmp)
        ensure_secret_key(home)  # as `make run`: the processes seal secrets with it (bus/secrets.py)
        roles = ensure_seeds(home / "credentials")
        nats = EmbeddedNats(home / "nats", authorization=server_authorization(roles)).start()
        pg = EmbeddedPostgres(home / "pg").start()
        try:
            yield Infra(nats, pg, home)
        finally:
            nats.stop()
            pg.stop()


@contextmanager
def processes(
    commands: Mapping[str, list[str]], env: Mapping[str, str], logs: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Start each command as a child process; SIGTERM (then SIGKILL) each by its pid on exit."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in commands.items():
            log = (logs / f"{name}.log").open("ab")
            children[name] = subprocess.Popen([sys.executable, *argv], env=dict(env), cwd=ROOT, stdout=log, stderr=log)
        yield children
    finally:
        for child in children.values():
            child.terminate()
        for child in children.values():
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (field 3 of proc(5) is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_cpu_seconds() -> float:
    """CPU time every core has spent busy so far (the `cpu` line of /proc/stat, idle and iowait left out)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children, the ended ones included (cutime + cstime): PostgreSQL's
    postmaster and its backends."""
    fields = _stat(pid)
    own = sum(int(f) for f in fields[11:15]) / _TICK
    alive = 0.0
    for child in _children(pid):
        try:
            alive += cpu_seconds(child)
        except OSError:  # ended between the listing and the read: counted in cutime next time
            continue
    return own + alive


class CpuMeter:
    """utime + stime of named processes across one measured phase, per unit of work."""

    def __init__(self, probes: Mapping[str, Callable[[], float]]) -> None:
        self._probes = dict(probes)
        self._before: dict[str, float] = {}
        self.used_s: dict[str, float] = {}
        self.wall_s = 0.0
        self.machine_s = 0.0
        self._machine_before = 0.0
        self._t0 = 0.0

    @classmethod
    def of(cls, servers: Infra, children: Mapping[str, int], *, postgres: bool = True, client: bool = True) -> CpuMeter:
        """The children by name, then nats-server, PostgreSQL (postmaster + backends) and this process."""
        probes: dict[str, Callable[[], float]] = {name: _probe(pid) for name, pid in children.items()}
        probes["nats-server"] = _probe(servers.nats_pid)
        if postgres:
            pg = servers.postgres_pid
            probes["postgres"] = lambda: tree_cpu_seconds(pg)
        if client:
            probes["bench client"] = _probe(os.getpid())
        return cls(probes)

    def start(self) -> None:
        self._before = {name: probe() for name, probe in self._probes.items()}
        self._machine_before = machine_cpu_seconds()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self.used_s = {name: probe() - self._before[name] for name, probe in self._probes.items()}
        self.machine_s = machine_cpu_seconds() - self._machine_before

    def rows(self, units: int) -> list[tuple[object, ...]]:
        """(process, CPU ms per unit, share of the total, cores busy) rows and their total."""
        total = sum(self.used_s.values())
        rows: list[tuple[object, ...]] = [
            (
                name,
                f"{used * 1000 / units:.2f}",
                f"{100 * used / total:.0f}%" if total else "0%",
                f"{used / self.wall_s:.2f}",
            )
            for name, used in sorted(self.used_s.items(), key=lambda kv: -kv[1])
        ]
        rows.append(("total", f"{total * 1000 / units:.2f}", "100%", f"{total / self.wall_s:.2f}"))
        # what else ran meanwhile: on a shared machine, the figures above got only what was left
        others = max(self.machine_s - total, 0.0)
        rows.append(("(other processes on this machine)", "", "", f"{others / self.wall_s:.2f}"))
        return rows

    def report(self, report: Report, title: str, units: int, unit: str) -> None:
        report.table(title, ("process", f"CPU ms per {unit}", "share", "cores busy"), self.rows(units))

    def per_unit_ms(self, units: int) -> float:
        return sum(self.used_s.values()) * 1000 / units


def _probe(pid: int) -> Callable[[], float]:
    return lambda: cpu_seconds(pid)


async def services_up(nc: NatsClient, actor: str, instances: int = 1, *, timeout_s: float = 60.0) -> None:
    """Until `instances` of an actor are started: their NATS micro INFO lists the `health` endpoint,
    which the Actor base adds after every other endpoint and consumer."""
    deadline = time.monotonic() + timeout_s
    while True:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.INFO.agentbus-{actor}", b"", reply=inbox)
        started = 0
        with contextlib.suppress(TimeoutError, NatsTimeoutError):
            while started < instances:
                reply = await sub.next_msg(timeout=0.25)
                if not reply.data:  # a status message: no responders
                    break
                info = json.loads(reply.data)
                started += any(e.get("name") == "health" for e in info.get("endpoints") or [])
        await sub.unsubscribe()
        if started >= instances:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{instances} {actor} instances are not started after {timeout_s:.0f}s")


async def wait_http(
    url: str, *, timeout: float = 30.0, children: Mapping[str, subprocess.Popen[bytes]] | None = None
) -> None:
    """Until `url` answers 200; fails at once, naming it, if one of `children` exits meanwhile."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            for name, child in (children or {}).items():
                if child.poll() is not None:
                    raise RuntimeError(f"{name} exited with {child.returncode} while {url} was not ready")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready")
