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
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(180)


async def test_keys_create_prints_a_key_the_gateway_can_resolve(bus_config: BusConfig, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NATS_URL": ",".join(bus_config.servers),
        "AGENTBUS_NATS_CREDENTIALS": str(bus_config.credentials_dir),
    }
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
        self._follower: asyncio.Task[None] | None = None
        self._cursor = 0  # where `said` looks from: past the last line it found

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

    def follow(self) -> None:
        """Keep reading its output (into `lines`) in the background, so the supervisor never blocks on it."""

        async def read() -> None:
            assert self.proc.stdout is not None
            async for raw in self.proc.stdout:
                self.lines.append(raw.decode().rstrip())

        self._cursor = len(self.lines)
        self._follower = asyncio.create_task(read())

    async def said(self, text: str, timeout: float) -> str:
        """The next line containing `text` after what `said` found before (or since `follow`)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for number in range(self._cursor, len(self.lines)):
                if text in self.lines[number]:
                    self._cursor = number + 1
                    return self.lines[number]
            await asyncio.sleep(0.1)
        raise AssertionError(f"agentbus run did not say {text!r} in {timeout}s:\n" + "\n".join(self.lines[-30:]))

    async def stop(self) -> None:
        """Ctrl-C, and wait for it to exit."""
        self.proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            if self._follower is not None:
                await self._follower
            await self.proc.wait()

    def child(self, module: str) -> int:
        """The PID of the supervisor's child running `python -m <module>`."""
        for pid in self.descendants():
            with contextlib.suppress(OSError):
                if module.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                    return pid
        raise AssertionError(f"no child runs {module}")

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
    run = Run(proc)
    try:
        yield run
    finally:
        if run._follower is not None and proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run._follower, timeout=60)
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


def _embedded_env() -> dict[str, str]:
    """`agentbus run` with its embedded servers, on free ports (never the default ones)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env["AGENTBUS_PORT"] = str(free_port())
    env["AGENTBUS_NATS_PORT"] = str(free_port())
    return env


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find the processes it started")
async def test_run_embedded_serves_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    env = _embedded_env()
    keys_seen: list[str] = []
    for _ in range(2):
        async with agentbus_run(tmp_path, env) as run:
            await run.ready()
            gateway = run.value("gateway")
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{gateway}/health")).status_code == 200
            assert (tmp_path / ".agentbus" / "gateway.url").read_text().strip() == gateway
            status = await asyncio.create_subprocess_exec(  # finds the gateway and the dev key in .agentbus/
                sys.executable, "-m", "bus.cli", "status",
                cwd=tmp_path, env={k: v for k, v in env.items() if k != "AGENTBUS_PORT"},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            shown, err = await status.communicate()
            assert status.returncode == 0 and b"executor" in shown, err.decode()
            if not keys_seen:  # the welcome's console, and a terminal chat against the running platform
                await _console_and_chat_answer(tmp_path, env, run)
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


async def _console_and_chat_answer(cwd: Path, env: dict[str, str], run: Run) -> None:
    """The console URL `agentbus run` printed serves the console; `agentbus chat`, finding the gateway and the
    dev key in .agentbus/ as a user's would, sends a message and its reply is stored."""
    console = run.value("console")
    async with httpx.AsyncClient() as http:
        page = await http.get(console)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"], page.text[:200]
        chat = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bus.cli", "chat",
            cwd=cwd, env={k: v for k, v in env.items() if k != "AGENTBUS_PORT"},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await chat.communicate(b"hello from the terminal\n")
        assert chat.returncode == 0, err.decode()
        conversation = out.decode().split("new conversation", 1)[1].split()[0]
        headers = {"Authorization": f"Bearer {run.value('API key')}"}
        stored = await http.get(f"{run.value('gateway')}/v1/conversations/{conversation}/messages", headers=headers)
    messages = stored.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"], messages
    assert messages[0]["content"] == "hello from the terminal" and messages[1]["content"][:20] in out.decode()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find the processes it started")
async def test_run_restarts_a_killed_executor_and_the_work_accepted_meanwhile_completes(tmp_path: Path) -> None:
    async with agentbus_run(tmp_path, _embedded_env()) as run:
        await run.ready()
        run.follow()
        gateway, key = run.value("gateway"), run.value("API key")
        executor = run.child("actors.executor")
        os.kill(executor, signal.SIGKILL)
        async with httpx.AsyncClient(base_url=gateway, headers={"Authorization": f"Bearer {key}"}) as http:
            response = await http.post("/v1/tasks", json={"task_type": "delegation", "prompt": "while it was down"})
            assert response.status_code == 202, response.text
            (queued,) = response.json()["last_runs"]
            reported = await run.said("executor exited unexpectedly", timeout=10)
            assert "SIGKILL" in reported
            await run.said("restarting executor in", timeout=5)
            await run.said("executor restarted", timeout=10)
            assert run.child("actors.executor") != executor

            async def completed() -> bool:
                run_view = (await http.get(f"/v1/task-runs/{queued['id']}")).json()
                assert run_view["status"] in ("queued", "running", "completed"), run_view
                return bool(run_view["status"] == "completed")

            try:
                await wait_until(completed, timeout=60, interval=0.25, what="the task accepted while it was down")
            except AssertionError as e:
                raise AssertionError("\n".join([str(e), *run.lines[-60:]])) from None
        await run.stop()
        assert run.proc.returncode == 0, "\n".join(run.lines[-40:])
