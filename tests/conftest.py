"""Real servers for every test: a nats-server per test, a PostgreSQL per session (a database per test).

Only the LLM is replaced (pydantic-ai TestModel / FunctionModel); real model calls are forbidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pydantic_ai.models
import pytest
import structlog
import uvicorn
from httpx_sse import aconnect_sse
from pydantic_ai.models import Model
from pydantic_ai.models.test import TestModel

from bus import keys
from bus.actor import Actor
from bus.client import Bus
from bus.config import BusConfig
from bus.credentials import ensure_seeds
from bus.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from bus.permissions import server_authorization

pydantic_ai.models.ALLOW_MODEL_REQUESTS = False
ROOT = Path(__file__).resolve().parent.parent

# Children (actor subprocesses) must not reach a real model either.
os.environ.setdefault("AGENTBUS_OFFLINE", "1")
# The scheduler's tests fire tasks seconds apart; the platform's default shortest interval is a minute.
os.environ.setdefault("AGENTBUS_QUOTA_MIN_INTERVAL_S", "1")
# A gateway started as a process (`python -m gateway`) limits each key to 100 requests a minute; tests of
# other things send more. The rate-limit tests set their own limits.
os.environ.setdefault("AGENTBUS_RATE_LIMIT", "0")
os.environ.setdefault("AGENTBUS_WEBHOOK_RATE_LIMIT", "0")

# structlog's defaults, but tracebacks as plain text: its default renders each logged exception with rich,
# locals and all, which held an actor's event loop for over a second per exception on this 2-core machine
# (a PostgreSQL outage logs several), long enough for replies to miss their timeouts.
structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
        structlog.dev.set_exc_info,
        structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
        structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
    ]
)


def pytest_configure(config: pytest.Config) -> None:
    """A temp root of this session's own: pytest prunes old /tmp/pytest-of-<user>/pytest-N roots,
    which would delete the data of another session's PostgreSQL that is still running."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="agentbus-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[str]()


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A command run in-process (`bus.cli.main`) configures logging for itself: undone after the test."""
    config = structlog.get_config()
    context = structlog.contextvars.get_contextvars()
    yield
    structlog.configure(**config)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg")).start()
    yield pg
    pg.stop()


@pytest.fixture
def nats_credentials(tmp_path: Path) -> Path:
    """A directory of nkey seeds, one per process role (`<role>.nk`), as `agentbus run` makes them."""
    directory = tmp_path / "credentials"
    ensure_seeds(directory)
    return directory


@pytest.fixture
def nats_server(request: pytest.FixtureRequest, tmp_path: Path, nats_credentials: Path) -> Iterator[EmbeddedNats]:
    """An authenticated nats-server: every process connects with its role's nkey and permissions.

    A test fails if the server refused any publish or subscribe (the permissions missed something a
    process needs), unless it is marked `bus_violations` (an attack test that expects refusals).
    """
    roles = ensure_seeds(nats_credentials)
    server = EmbeddedNats(tmp_path / "nats", authorization=server_authorization(roles)).start()
    yield server
    server.stop()
    log = (server.data_dir / "nats.log").read_text(errors="replace")
    refused = [line for line in log.splitlines() if "Violation" in line]
    if refused and request.node.get_closest_marker("bus_violations") is None:
        pytest.fail("nats-server refused what a process did:\n" + "\n".join(refused[:10]), pytrace=False)


@pytest.fixture
async def database_url(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.uri())
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield postgres.uri(name)
    admin = await asyncpg.connect(postgres.uri())
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
def bus_config(nats_server: EmbeddedNats, nats_credentials: Path) -> BusConfig:
    """Short ack_wait so a killed actor's work is redelivered within a test's time."""
    return BusConfig(
        servers=(nats_server.url,),
        name="test",
        ack_wait_s=2.0,
        request_timeout_s=5.0,
        credentials_dir=str(nats_credentials),
    )


@pytest.fixture
def actor_env(bus_config: BusConfig, database_url: str) -> dict[str, str]:
    """Environment for an actor subprocess talking to this test's servers."""
    return {
        **os.environ,
        "NATS_URL": ",".join(bus_config.servers),
        **({"AGENTBUS_NATS_CREDENTIALS": bus_config.credentials_dir} if bus_config.credentials_dir else {}),
        "DATABASE_URL": database_url,
        "AGENTBUS_ACK_WAIT": str(bus_config.ack_wait_s),
        "AGENTBUS_LOG_FORMAT": "json",
    }


@contextlib.asynccontextmanager
async def running(*actors: Actor) -> AsyncIterator[tuple[Actor, ...]]:
    """Start actors in this event loop; stop them (gracefully) when the block ends."""
    started: list[Actor] = []
    try:
        for actor in actors:
            await actor.start()
            started.append(actor)
        yield actors
    finally:
        for actor in reversed(started):
            await actor.stop()


class ActorProcess:
    """An actor as a real OS process (`python -m actors.<name>`), for crash tests."""

    def __init__(self, name: str, env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ActorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"actors.{self.name}"], env=self.env, cwd=ROOT, stdout=log, stderr=log
        )
        return self

    def kill(self) -> None:
        """kill -9: no drain, no goodbye."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def spawn_actor(actor_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    """Factory: spawn_actor("executor", extra_env) -> ActorProcess, all stopped after the test."""
    procs: list[ActorProcess] = []

    def spawn(name: str, extra_env: Mapping[str, str] | None = None) -> ActorProcess:
        p = ActorProcess(name, {**actor_env, **(extra_env or {})}, tmp_path / f"{name}-{len(procs)}.log").start()
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        p.stop()


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll `predicate` until it is true; fail the test after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def sse_messages(
    client: httpx.AsyncClient, path: str, **kwargs: Any
) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """An SSE route's messages as they come, `{id, event, data}` (its data decoded as JSON)."""
    async with aconnect_sse(client, "GET", path, timeout=30, **kwargs) as source:
        assert source.response.status_code == 200, source.response.status_code

        async def messages() -> AsyncIterator[dict[str, Any]]:
            async for sse in source.aiter_sse():
                yield {"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)}

        yield messages()


class Platform:
    """Conversation and executor actors plus the gateway (uvicorn), all in the test's event loop."""

    def __init__(self, url: str, key: str, bus: Bus, executor: Any) -> None:
        self.url = url
        self.key = key
        self.bus = bus
        self.executor = executor

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0, **kwargs)

    async def key_for(self, tenant: str) -> str:
        return await keys.create_key(self.bus, tenant=tenant, name="test")


@pytest.fixture
async def start_platform(bus_config: BusConfig, database_url: str) -> AsyncIterator[Callable[..., Awaitable[Platform]]]:
    """start_platform(model=TestModel(), **gateway_config) -> Platform; stopped after the test."""
    from actors.conversation.actor import ConversationActor
    from actors.conversation.config import ConversationConfig
    from actors.executor.actor import ExecutorActor
    from actors.executor.config import ExecutorConfig
    from gateway.app import create_app
    from gateway.config import GatewayConfig

    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(
        model: Model | None = None,
        *,
        background: bool = False,
        smtp_port: int = 1,
        agents_file: Path | None = None,
        research: bool = True,
        providers: bool = False,
        executor_config: dict[str, Any] | None = None,
        **gateway: Any,
    ) -> Platform:
        """`background`: also the scheduler, trigger, notifier (SMTP on `smtp_port`, 127.0.0.1 allowed) and,
        unless `research` is false (a test runs it as a process), the research actor. `providers`: the agents
        file's models run as configured (against local provider servers), not `model`."""
        executor = ExecutorActor(
            bus_config,
            ExecutorConfig(
                database_url=database_url, offline=not providers, agents_file=agents_file, **(executor_config or {})
            ),
            model_override=None if providers else model or TestModel(),
        )
        conversation = ConversationActor(bus_config, ConversationConfig(database_url=database_url))
        await conversation.start()
        cleanups.append(conversation.stop)
        await executor.start()
        cleanups.append(executor.stop)
        if background:
            from actors._outbound import Allowlist
            from actors.notifier.actor import NotifierActor
            from actors.notifier.config import NotifierConfig
            from actors.research.actor import ResearchActor
            from actors.research.config import ResearchConfig
            from actors.scheduler.actor import SchedulerActor
            from actors.scheduler.config import SchedulerConfig
            from actors.trigger.actor import TriggerActor
            from actors.trigger.config import TriggerActorConfig

            notifier = NotifierConfig(
                database_url=database_url,
                smtp_host="127.0.0.1",
                smtp_port=smtp_port,
                allow=Allowlist.parse("127.0.0.1"),
                retry_schedule_s=(0.3, 0.3, 0.3),
            )
            actors: list[Actor] = [
                SchedulerActor(
                    bus_config,
                    SchedulerConfig(database_url=database_url, max_tick_s=0.2, allow=Allowlist.parse("127.0.0.1")),
                ),
                TriggerActor(bus_config, TriggerActorConfig(database_url=database_url)),
                NotifierActor(bus_config, notifier),
            ]
            if research:
                allow = Allowlist.parse("127.0.0.1")
                actors.append(ResearchActor(bus_config, ResearchConfig(database_url=database_url, allow=allow)))
            for actor in actors:
                await actor.start()
                cleanups.append(actor.stop)
        else:
            gateway.setdefault("actors", ("conversation", "executor"))
        port = free_port()
        app = create_app(GatewayConfig(port=port, **gateway), bus_config)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        serving = asyncio.create_task(server.serve())

        async def stop_server() -> None:
            server.should_exit = True
            await asyncio.wait_for(serving, 15)

        cleanups.append(stop_server)
        await wait_until(lambda: _started(server), timeout=15, what="the gateway to start")
        bus = await Bus.connect(bus_config)
        cleanups.append(bus.close)
        key = await keys.create_key(bus, tenant="t1", name="test")
        return Platform(f"http://127.0.0.1:{port}", key, bus, executor)

    yield start
    for cleanup in reversed(cleanups):
        await cleanup()


async def _started(server: uvicorn.Server) -> bool:
    return server.started


def _test_secret_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


# Secrets at rest (bus/secrets.py): one key for the run, inherited by actor subprocesses too.
os.environ.setdefault("AGENTBUS_SECRET_KEY", _test_secret_key())
