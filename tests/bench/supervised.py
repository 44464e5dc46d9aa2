"""Chat turns under the real supervisor: `agentbus run`, what `make run` starts, as a user runs it.

`agentbus run` (bus/supervisor.py) starts every actor and the gateway as its children, with its own
defaults: console logs at the default level pumped through the supervisor, the offline model. It
gets a nats-server of its own (sync_interval: always, as its embedded one; started here because the
embedded one would try port 4222 first) and a database of its own in the benchmark's PostgreSQL,
a temp AGENTBUS_HOME, and a free gateway port. An API key is made as the README says
(`agentbus keys create --tenant ...`); turns go over HTTP; the supervisor is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from bus.embedded import EmbeddedNats
from tests.bench.harness import (
    LATENCY,
    ROOT,
    CpuMeter,
    Infra,
    Latency,
    Report,
    Scale,
    free_port,
    measure,
    wait_http,
)

__all__ = ["run"]

DATABASE = "agentbus_run"
TENANT = "bench"
START_TIMEOUT_S = 120.0


def _agentbus() -> list[str]:
    """The `agentbus` console script of this environment (what `uv run agentbus` runs)."""
    script = Path(sys.executable).parent / "agentbus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bus.cli"]


def _env(nats_url: str, database_url: str, home: Path, port: int) -> dict[str, str]:
    """A user's environment: none of the benchmark's AGENTBUS_* settings, only where things are."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    return env | {
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "AGENTBUS_HOME": str(home),
        "AGENTBUS_PORT": str(port),
        "AGENTBUS_RATE_LIMIT": "0",  # the platform's own cost, not the limiter's 100/min (that is `ratelimit`)
    }


def _children(pid: int) -> dict[str, int]:
    """The supervisor's children by name: `-m actors.<name>` and `-m gateway`."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) != pid or b"-m" not in argv:
            continue
        module = argv[argv.index(b"-m") + 1].decode()
        found[module.removeprefix("actors.")] = int(entry.name)
    return found


async def _create_database(servers: Infra) -> str:
    conn = await asyncpg.connect(servers.postgres.uri())
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await conn.close()
    return servers.postgres.uri(DATABASE)


async def _started(supervisor: asyncio.subprocess.Process, home: Path, log: Path) -> None:
    """Until `agentbus run` has written its development key: it does once the gateway is healthy."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (home / "dev-api-key").exists():
        if supervisor.returncode is not None:
            raise RuntimeError(f"agentbus run exited with {supervisor.returncode}: see {log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"agentbus run was not ready after {START_TIMEOUT_S:.0f}s: see {log}")
        await asyncio.sleep(0.2)


async def _key(env: dict[str, str]) -> str:
    """An API key, made as the README says: `agentbus keys create --tenant <tenant>`."""
    made = await asyncio.create_subprocess_exec(
        *_agentbus(), "keys", "create", "--tenant", TENANT, "--name", "bench",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(made.communicate(), 60)
    if made.returncode != 0:
        raise RuntimeError(f"agentbus keys create failed: {err.decode()[-500:]}")
    return out.decode().strip().splitlines()[-1]


async def _stop(supervisor: asyncio.subprocess.Process) -> None:
    """SIGTERM, as Ctrl-C would; it stops its children, then wait for it (SIGKILL after a minute)."""
    if supervisor.returncode is None:
        supervisor.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(supervisor.wait(), 60)
    except TimeoutError:
        supervisor.kill()
        await supervisor.wait()


async def _turns(base: str, key: str, scale: Scale, meter: CpuMeter) -> dict[int, Latency]:
    out: dict[int, Latency] = {}
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        # a new conversation per turn, as in the chat benchmark, made before the clock starts
        fresh: list[str] = []

        async def create(_: int) -> None:
            r = await client.post("/v1/conversations", json={})
            r.raise_for_status()
            fresh.append(r.json()["id"])

        turns = scale.supervised_c1 + scale.supervised_c32 + scale.warmup
        await measure(create, total=turns, concurrency=16, warmup=0)

        async def turn(_: int) -> None:
            r = await client.post(f"/v1/conversations/{fresh.pop()}/messages", json={"message": "hello"})
            r.raise_for_status()

        out[1] = await measure(turn, total=scale.supervised_c1, concurrency=1, warmup=scale.warmup)
        meter.start()
        out[32] = await measure(turn, total=scale.supervised_c32, concurrency=32, warmup=0)
        meter.stop()
    return out


async def run(servers: Infra, logs: Path, scale: Scale, report: Report) -> None:
    database_url = await _create_database(servers)
    with tempfile.TemporaryDirectory(prefix="agentbus-bench-run-") as tmp:
        home = Path(tmp) / "home"
        nats = EmbeddedNats(Path(tmp) / "nats").start()
        port = free_port()
        env = _env(nats.url, database_url, home, port)
        log = logs / "agentbus-run.log"
        try:
            with log.open("ab") as out:
                supervisor = await asyncio.create_subprocess_exec(
                    *_agentbus(), "run", env=env, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
                )
            try:
                await _started(supervisor, home, log)
                base = f"http://127.0.0.1:{port}"
                await wait_http(f"{base}/health", timeout=30)
                key = await _key(env)
                children = {"agentbus run (supervisor)": supervisor.pid, **_children(supervisor.pid)}
                meter = CpuMeter.of(Infra(nats, servers.postgres, Path(tmp)), children)
                turns = await _turns(base, key, scale, meter)
            finally:
                await _stop(supervisor)
        finally:
            nats.stop()
    report.table(
        "chat turn under `agentbus run` (make run's supervisor, its defaults: offline model, console logs) (ms)",
        ("concurrency", *LATENCY, "turns/s"),
        [(f"c={c}", *lat.cells(), f"{lat.per_s:.0f}") for c, lat in turns.items()],
    )
    meter.report(report, f"CPU per chat turn under `agentbus run`, c=32 ({scale.supervised_c32} turns)",
                 scale.supervised_c32, "turn")  # fmt: skip
    c32 = turns[32]
    report.target(
        "chat turn c=32 under `agentbus run`",
        f"{c32.per_s:.0f} turns/s (p50 {c32.p50_ms:.1f} ms); CPU {meter.per_unit_ms(scale.supervised_c32):.1f} ms/turn",
        ">= 150 turns/s",
        c32.per_s >= 150,
    )
