"""The `agentbus` command as a user runs it: real processes, real nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bus import keys
from bus.client import Bus
from bus.config import BusConfig
from bus.embedded import free_port

pytestmark = pytest.mark.timeout(180)


async def test_keys_create_prints_a_key_the_gateway_can_resolve(bus_config: BusConfig, tmp_path: Path) -> None:
    env = {**os.environ, "NATS_URL": ",".join(bus_config.servers)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.cli", "keys", "create", "--tenant", "acme", "--name", "ci",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    key = out.decode().strip()
    bus = await Bus.connect(bus_config)
    try:
        assert await keys.lookup(bus, key) is not None
        assert await keys.lookup(bus, key[:-2] + ("aa" if not key.endswith("aa") else "bb")) is None
    finally:
        await bus.close()


async def test_keys_create_without_nats_says_how_to_get_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.cli", "keys", "create", "--tenant", "acme",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode != 0
    assert "agentbus run" in err.decode()


class Run:
    """`agentbus run` in a directory, read until it says it is running."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def ready(self, timeout: float = 120.0) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError("agentbus run exited before it was ready:\n" + "\n".join(self.lines))
                self.lines.append(raw.decode().rstrip())
                if self.lines[-1].startswith("Ctrl-C stops everything"):
                    return

    def value(self, label: str) -> str:
        """The first word after `label` in the welcome block (its lines start with two spaces)."""
        return next(line[len(label) + 2 :].split()[0] for line in self.lines if line.startswith(f"  {label} "))

    def descendants(self) -> list[int]:
        """Children of the supervisor, and the embedded nats-server / PostgreSQL it started."""
        pids: list[int] = []
        for proc_dir in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(proc_dir.name))
        return pids


@contextlib.asynccontextmanager
async def agentbus_run(cwd: Path, env: dict[str, str]) -> AsyncIterator[Run]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.cli", "run",
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield Run(proc)
    finally:
        if proc.returncode is None:  # a failed test: stop it the way a user would, so nothing is left running
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.communicate(), timeout=60)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and ") Z " not in Path(f"/proc/{pid}/stat").read_text()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find the processes it started")
async def test_run_embedded_serves_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env["AGENTBUS_PORT"] = str(free_port())
    keys_seen: list[str] = []
    for _ in range(2):
        async with agentbus_run(tmp_path, env) as run:
            await run.ready()
            gateway = run.value("gateway")
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{gateway}/health")).status_code == 200
            started = run.descendants()
            postmaster = int((tmp_path / ".agentbus" / "pg" / "postmaster.pid").read_text().split()[0])
            assert len(started) >= 4  # nats-server, two actors, the gateway
            keys_seen.append(run.value("API key"))
            assert (tmp_path / ".agentbus" / "dev-api-key").stat().st_mode & 0o777 == 0o600
            run.proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(60):
                rest, _ = await run.proc.communicate()
            assert run.proc.returncode == 0, rest.decode()
            assert [pid for pid in [*started, postmaster] if alive(pid)] == []
    assert keys_seen[0] == keys_seen[1]  # the second run found the first one's NATS data (and key)
