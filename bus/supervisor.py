"""`agentbus run`: NATS and PostgreSQL (embedded, or yours), then every actor and the gateway as child processes.

A child that exits while serving is reported with its last lines and started again after a capped
exponential backoff (0.5 s, 1 s, 2 s ... 30 s; back to 0.5 s once it has stayed up a minute), so a
`kill -9` of any actor costs a pause, never accepted work: its unacked messages are redelivered to
the new process. A child that keeps crashing is never given up on, and each crash is said.
Ctrl-C or SIGTERM stops the children (SIGTERM, wait, SIGKILL), then nats-server, then PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bus.credentials import Role, seed_path
from bus.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from bus.nats_server import AuthenticatedNats

__all__ = ["ACTORS", "CREDENTIALS", "Child", "RunConfig", "Running", "Supervisor", "restart_delay", "say"]

# Every actor `agentbus run` starts, as `python -m actors.<name>`: adding one is adding its name here.
ACTORS: tuple[str, ...] = ("conversation", "executor", "scheduler", "trigger", "notifier", "research")

CREDENTIALS = "credentials"  # under the home: the NATS nkey seed of each process role
METRICS_PORT_OFFSET = 100  # actor i (in ACTORS order) serves /metrics on the gateway port + 100 + i, if free
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
STABLE_S = 60.0  # a child that ran this long before it died starts its backoff over
CRASH_LOOP = 5  # consecutive quick crashes after which the supervisor says it keeps crashing


def restart_delay(crashes: int) -> float:
    """Seconds before restarting a child after its `crashes`-th quick crash in a row.

    A capped exponential, written out: tenacity retries a call until it succeeds, while a supervisor
    restarts a process whose success is to keep running, with its own rule for when to start over.
    """
    return min(RESTART_MAX_S, RESTART_FIRST_S * 2.0 ** max(crashes - 1, 0))


def say(text: str) -> None:
    print(f"{'agentbus':>12} | {text}", flush=True)


# Resolved here, not in the forked child: a child of a threaded process should only call, not dlopen.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the supervisor dies, even by SIGKILL (Linux)."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One `agentbus run` per data directory: two would fight over the same nats and pg data."""
    with lock_path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another `agentbus run` is using {lock_path.parent}") from None
        yield


def _clear_leftovers(home: Path) -> None:
    """Undo what a supervisor killed with SIGKILL left behind (we hold the run lock, so none is alive).

    Its children died with it (PR_SET_PDEATHSIG), but its nats-server would share the JetStream store
    with ours, and pgserver would keep its dead pid as a handle and never stop PostgreSQL.
    """
    pid_file = home / "nats.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        ps = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False)
        if "nats-server" in ps.stdout:
            say(f"stopping the nats-server (pid {pid}) an earlier run left behind")
            os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(ProcessLookupError):
                for _ in range(100):
                    os.kill(pid, 0)  # raises once it is gone
                    time.sleep(0.1)
        pid_file.unlink()
    (home / "pg" / ".handle_pids.json").unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class RunConfig:
    home: Path = Path(".agentbus")
    nats_url: str | None = None  # None: start the embedded nats-server
    database_url: str | None = None  # None: start the embedded PostgreSQL
    nats_port: int = 4222  # preferred port of the embedded nats-server (a free one if it is taken)
    port: int = 8000  # preferred gateway port
    log_format: str = "console"
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 20.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunConfig:
        e = os.environ if env is None else env
        d = cls()
        return cls(
            home=Path(e.get("AGENTBUS_HOME", ".agentbus")).resolve(),
            nats_url=e.get("NATS_URL") or None,
            database_url=e.get("DATABASE_URL") or None,
            nats_port=int(e.get("AGENTBUS_NATS_PORT", d.nats_port)),
            port=int(e.get("AGENTBUS_PORT", d.port)),
            log_format=e.get("AGENTBUS_LOG_FORMAT", d.log_format),
        )


@dataclass(frozen=True, slots=True)
class Running:
    """What a started `agentbus run` serves, for whoever prints the welcome."""

    config: RunConfig
    gateway_url: str
    gateway_port: int
    nats_url: str


@dataclass
class Child:
    """One child process; its output is printed prefixed with its name and the last lines kept."""

    name: str
    argv: tuple[str, ...]
    process: asyncio.subprocess.Process | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    pump: asyncio.Task[None] | None = None
    started_at: float = 0.0
    crashes: int = 0  # quick crashes in a row
    env: dict[str, str] = field(default_factory=dict)  # its own, over the environment all children share

    async def start(self, env: Mapping[str, str]) -> None:
        self.started_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env={**env, **self.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the supervisor, which stops children in order
            preexec_fn=_die_with_parent,
            limit=1 << 24,
        )
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        prefix = f"{self.name:>12} |"
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            print(prefix, line, flush=True)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def report(self, why: str) -> None:
        code = self.process.returncode if self.process is not None else None
        killed = ""
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                killed = f" = {signal.Signals(-code).name}"
        say(f"{self.name} {why} (exit code {code}{killed}); its last lines:")
        for line in list(self.tail)[-15:]:
            say(f"  {line}")


class Supervisor:
    """Owns the embedded servers and the children for the lifetime of one `agentbus run`."""

    def __init__(self, config: RunConfig, *, on_ready: Callable[[Running], Awaitable[None]]) -> None:
        self.config = config
        self.on_ready = on_ready
        self.nats: EmbeddedNats | None = None
        self.authenticated: AuthenticatedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.children: list[Child] = []
        self._env: dict[str, str] = {}
        self._stopping = asyncio.Event()
        self._first_signal_at = 0.0

    async def run(self) -> int:
        """Start everything, serve until Ctrl-C / SIGTERM, stop everything; the exit code."""
        home = self.config.home
        home.mkdir(parents=True, exist_ok=True)
        with _exclusive(home / "run.lock"):
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal)
            try:
                return await self._serve()
            finally:
                await self._stop_children()
                if self.authenticated is not None:
                    await self.authenticated.stop_following()
                await asyncio.to_thread(self._stop_infra)
                for name in ("nats.url", "database.url", "nats.pid"):
                    (home / name).unlink(missing_ok=True)
                say("stopped")

    def _on_signal(self) -> None:
        # Ctrl-C under `uv run` arrives twice at once (from the terminal, and forwarded by uv):
        # only an interrupt well after the first one means "stop now".
        now = time.monotonic()
        if self._stopping.is_set() and now - self._first_signal_at > 1.0:
            say("second interrupt: killing children now")
            for child in self.children:
                child.signal(signal.SIGKILL)
        elif not self._stopping.is_set():
            self._first_signal_at = now
        self._stopping.set()

    async def _serve(self) -> int:
        nats_url, database_url = await self._start_infra()
        if self._stopping.is_set():
            return 0
        port = free_port(self.config.port)
        self._env = env = {
            **os.environ,
            "NATS_URL": nats_url,
            "DATABASE_URL": database_url,
            "AGENTBUS_LOG_FORMAT": self.config.log_format,
            "AGENTBUS_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
        # each actor serves /metrics on its own port, from the gateway's port + 100 on (the gateway on /metrics)
        self.children = [
            Child(
                name,
                (sys.executable, "-m", f"actors.{name}"),
                env={"AGENTBUS_METRICS_PORT": str(free_port(port + METRICS_PORT_OFFSET + i))},
            )
            for i, name in enumerate(ACTORS)
        ]
        self.children.append(Child("gateway", (sys.executable, "-m", "gateway")))
        if self.authenticated is not None:  # each child connects with its own role's nkey alone
            for child in self.children:
                child.env["NATS_NKEY_SEED_FILE"] = str(seed_path(self.authenticated.credentials_dir, Role(child.name)))
        say(
            "metrics: "
            + ", ".join(
                f"{c.name} http://127.0.0.1:{c.env.get('AGENTBUS_METRICS_PORT', port)}/metrics" for c in self.children
            )
        )
        for child in self.children:
            await child.start(env)
        gateway_url = f"http://127.0.0.1:{port}"
        (self.config.home / "gateway.url").write_text(gateway_url + "\n")  # for `agentbus chat` and friends
        if not await self._wait_ready(gateway_url):
            return 0 if self._stopping.is_set() else 1
        await self.on_ready(Running(self.config, gateway_url, port, nats_url))
        await self._watch()
        return 0

    async def _start_infra(self) -> tuple[str, str]:
        home, cfg = self.config.home, self.config
        await asyncio.to_thread(_clear_leftovers, home)
        nats_url = cfg.nats_url
        if nats_url is None:
            self.authenticated = AuthenticatedNats(home / "nats", home / CREDENTIALS)
            self.nats = self.authenticated.server
            await asyncio.to_thread(self.authenticated.start, preferred_port=cfg.nats_port)
            assert self.nats.process is not None
            (home / "nats.pid").write_text(f"{self.nats.process.pid}\n")
            await self.authenticated.follow_tenant_users()
            nats_url = self.nats.url
            taken = f" (port {cfg.nats_port} is taken)" if self.nats.port != cfg.nats_port else ""
            say(f"embedded nats-server on {nats_url}{taken}, data in {home / 'nats'}")
            say(f"NATS requires credentials: an nkey per process in {home / CREDENTIALS} (admin.nk is yours)")
        else:
            say(f"using NATS_URL={nats_url}")
        database_url = cfg.database_url
        if database_url is None:
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs, via pgserver
            self.postgres = EmbeddedPostgres(home / "pg")
            await asyncio.to_thread(self.postgres.start)
            database_url = self.postgres.uri()
            say(f"embedded PostgreSQL on {database_url}, data in {home / 'pg'}")
        else:
            say("using DATABASE_URL from the environment")
        (home / "nats.url").write_text(nats_url + "\n")
        (home / "database.url").write_text(database_url + "\n")
        return nats_url, database_url

    def _stop_infra(self) -> None:
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    async def _wait_ready(self, gateway_url: str) -> bool:
        """Until the gateway's /health is 200; False if a child dies, time runs out, or we are stopped."""
        deadline = asyncio.get_running_loop().time() + self.config.start_timeout_s
        async with httpx.AsyncClient(timeout=1.0) as http:
            while not self._stopping.is_set():
                for child in self.children:
                    if not child.alive:
                        await _drain(child)
                        child.report("exited during start-up")
                        return False
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{gateway_url}/health")).status_code == 200:
                        return True
                if asyncio.get_running_loop().time() > deadline:
                    say(f"the gateway was not healthy at {gateway_url}/health after {self.config.start_timeout_s:.0f}s")
                    for child in self.children:
                        child.report("is still starting")
                    return False
                await asyncio.sleep(0.25)
        return False

    async def _watch(self) -> None:
        """Serve until stopped, restarting any child that exits (see the module docstring)."""
        keepers = [asyncio.create_task(self._keep(child)) for child in self.children]
        try:
            await self._stopping.wait()
            await asyncio.gather(*keepers)  # each returns at once when stopping
        finally:
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)

    async def _keep(self, child: Child) -> None:
        """Restart `child` each time it exits, with backoff, until the supervisor stops."""
        while child.process is not None:
            if not await self._until_stopping(child.process.wait()):
                return
            await _drain(child)
            if self._stopping.is_set():
                return
            lived = time.monotonic() - child.started_at
            child.crashes = 1 if lived >= STABLE_S else child.crashes + 1
            child.report(f"exited unexpectedly after {lived:.1f}s")
            delay = restart_delay(child.crashes)
            if child.crashes >= CRASH_LOOP:
                say(f"{child.name} keeps crashing ({child.crashes} times in a row): still restarting it, fix the cause")
            say(f"restarting {child.name} in {delay:g}s")
            if not await self._until_stopping(asyncio.sleep(delay)):
                return
            await child.start(self._env)
            assert child.process is not None
            say(f"{child.name} restarted (pid {child.process.pid})")

    async def _until_stopping(self, work: Awaitable[object]) -> bool:
        """Await `work` unless the supervisor is told to stop first; True if `work` finished."""
        done = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({done, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (done, stop):
                if not task.done():
                    task.cancel()
            await asyncio.gather(done, stop, return_exceptions=True)
        return done.done() and not done.cancelled() and not self._stopping.is_set()

    async def _stop_children(self) -> None:
        alive = [c for c in self.children if c.alive]
        if alive:
            say(f"stopping {', '.join(c.name for c in alive)}")
        for child in alive:
            child.signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(c.process.wait()) for c in alive if c.process is not None]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.config.stop_timeout_s)
            for child in alive:
                if child.alive:
                    say(f"{child.name} did not stop in {self.config.stop_timeout_s:.0f}s: killing it")
                    child.signal(signal.SIGKILL)
            await asyncio.gather(*pending, return_exceptions=True)
        for child in self.children:
            await _drain(child)


async def _drain(child: Child) -> None:
    """Wait for the rest of a finished child's output to be printed."""
    if child.pump is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(child.pump, timeout=2.0)
