"""A NATS failover under load: a 3-node JetStream cluster (replicas = 3) loses the leader of the streams a
delegated task goes through, by kill -9, while a client keeps delegating. Nothing accepted may be lost,
duplicated or failed, and no request may answer 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError

from bus import keys
from bus.client import Bus
from bus.config import BusConfig
from bus.embedded import EmbeddedNats, EmbeddedNatsCluster, free_port
from bus.streams import (
    CONVERSATION_CMD,
    EXECUTOR_CMD,
    EXECUTOR_EVT,
    IDEMPOTENCY_BUCKET,
    RUN_OUT,
    SCHEDULER_CMD,
    SCHEDULER_EVT,
)
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.timeout(90)

# The streams a delegation's path writes to: their leaders are moved to the meta leader's node, then it dies.
ON_THE_PATH = (
    SCHEDULER_EVT.name,  # TaskChanged, published after the create's commit
    SCHEDULER_CMD.name,
    CONVERSATION_CMD.name,
    EXECUTOR_CMD.name,
    RUN_OUT.name,  # the executor's output
    EXECUTOR_EVT.name,  # RunFinished
    f"KV_{keys.BUCKET}",  # API key lookups
    f"KV_{IDEMPOTENCY_BUCKET}",  # the gateway's record of each answer, written after the task's commit
)
TRICKLE_S = 10.0  # one delegation every 100 ms for this long
JOBS = int(TRICKLE_S * 10)
KILL_AFTER_S = 3.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedNatsCluster]:
    nodes = EmbeddedNatsCluster(tmp_path / "cluster", size=3).start()
    yield nodes
    nodes.stop()


@pytest.fixture
def bus_config(cluster: EmbeddedNatsCluster) -> BusConfig:
    """Every process of the platform on the cluster, every stream with three replicas."""
    return BusConfig(servers=cluster.urls, name="test", stream_replicas=3, ack_wait_s=2.0, request_timeout_s=5.0)


async def _leader(bus: Bus, stream: str) -> str:
    info = await bus.js.stream_info(stream)
    assert info.cluster is not None
    return info.cluster.leader or ""


async def _meta_leader(cluster: EmbeddedNatsCluster) -> str:
    """The meta leader's name, from a node's monitoring endpoint (asking over NATS needs the system account)."""
    async with httpx.AsyncClient(timeout=2.0) as http:
        jsz = (await http.get(f"{cluster.nodes[0].monitor_url}/jsz")).json()
    return str(jsz["meta_cluster"]["leader"])


async def _move_leader(bus: Bus, stream: str, to: str) -> None:
    """Ask the stream's leader to hand over to `to`, until it has."""

    async def moved() -> bool:
        if await _leader(bus, stream) == to:
            return True
        request = json.dumps({"placement": {"preferred": to}}).encode()
        with contextlib.suppress(Exception):  # a stepdown in progress answers late or not at all
            await bus.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=2.0)
        await asyncio.sleep(0.3)
        return await _leader(bus, stream) == to

    await wait_until(moved, timeout=20, interval=0.2, what=f"the leader of {stream} to move to {to}")


class Client:
    """Delegates one task every 100 ms; retries a 503/504 with the same Idempotency-Key, as a client should.
    Each job comes with an API key of its own, so the gateway looks a key up during the failover too."""

    def __init__(self, http: httpx.AsyncClient, api_keys: list[str]) -> None:
        self.http = http
        self.api_keys = api_keys
        self.statuses: Counter[int] = Counter()
        self.unexpected: list[str] = []
        self.accepted: dict[int, str] = {}  # job number -> task id
        self.connection_errors = 0

    async def delegate(self, number: int, deadline: float) -> None:
        body = {"task_type": "delegation", "prompt": f"job {number}"}
        headers = {"Idempotency-Key": f"job-{number}", "Authorization": f"Bearer {self.api_keys[number]}"}
        while time.monotonic() < deadline:
            try:
                response = await self.http.post("/v1/tasks", json=body, headers=headers)
            except httpx.TransportError:  # a kept-alive connection the server closed as it was reused
                self.connection_errors += 1
                continue
            self.statuses[response.status_code] += 1
            if response.status_code == 202:
                self.accepted[number] = response.json()["id"]
                return
            if response.status_code not in (503, 504):
                self.unexpected.append(f"{response.status_code} {response.text[:300]}")
                return
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def _health_sampler(http: httpx.AsyncClient, seen: list[tuple[float, int]]) -> AsyncIterator[None]:
    async def sample() -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                seen.append((time.monotonic(), (await http.get("/health")).status_code))
            await asyncio.sleep(0.25)

    task = asyncio.create_task(sample())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def _gateway_process(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`python -m gateway` on a free port; its URL. Stopped by PID."""
    port = free_port()
    env = {**env, "AGENTBUS_PORT": str(port), "AGENTBUS_ACTORS": "conversation,executor,scheduler"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_killing_the_stream_leaders_loses_fails_and_duplicates_nothing_accepted(
    cluster: EmbeddedNatsCluster, bus_config: BusConfig, actor_env: dict[str, str], spawn_actor: Any, tmp_path: Path
) -> None:
    begun = time.monotonic()
    env = {**actor_env, "AGENTBUS_STREAM_REPLICAS": "3"}
    bus = await Bus.connect(bus_config)  # declares every stream, with three replicas
    try:
        api_keys = [await keys.create_key(bus, tenant="t1", name=f"job-{n}") for n in range(JOBS)]
        for name in ("conversation", "executor", "scheduler"):
            spawn_actor(name, env)
        limits = httpx.Limits(keepalive_expiry=1.0)  # below uvicorn's 5 s, so no request meets a closing connection
        headers = {"Authorization": f"Bearer {api_keys[0]}"}
        with _gateway_process(env, tmp_path / "gateway.log") as url:
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0, limits=limits) as http:
                await wait_until(lambda: _healthy(http), timeout=30, what="/health 200")
                victim = await _meta_leader(cluster)  # the worst node to lose: it also leads every stream below
                for stream in ON_THE_PATH:
                    await _move_leader(bus, stream, victim)
                print(f"failover: platform up, leaders on {victim}, after {time.monotonic() - begun:.1f}s")
                await _failover(cluster.node(victim), http, Client(http, api_keys), begun)
    finally:
        await bus.close()


async def _failover(victim: EmbeddedNats, http: httpx.AsyncClient, client: Client, begun: float) -> None:
    """Delegate steadily, kill `victim` on the way, then check what became of every accepted task."""
    health: list[tuple[float, int]] = []
    async with _health_sampler(http, health):
        await wait_until(lambda: _healthy(http), timeout=30, what="/health 200 before the kill")
        started = time.monotonic()
        jobs: list[asyncio.Task[None]] = []
        killed_at = 0.0
        for number in range(JOBS):
            if not killed_at and time.monotonic() - started >= KILL_AFTER_S:
                victim.kill()
                killed_at = time.monotonic()
            jobs.append(asyncio.create_task(client.delegate(number, deadline=started + TRICKLE_S + 15)))
            await asyncio.sleep(0.1)
        await asyncio.gather(*jobs)
        print(f"failover: all answered after {time.monotonic() - begun:.1f}s: {client.statuses}")

        assert client.unexpected == [], client.unexpected
        assert client.statuses[500] == 0
        assert sorted(client.accepted) == list(range(JOBS)), f"not accepted in time: {client.statuses}"
        runs = await _runs_when_ended(http, list(client.accepted.values()))
        print(f"failover: every run ended after {time.monotonic() - begun:.1f}s")
        await wait_until(lambda: _healthy(http), timeout=20, what="/health 200 after the failover")
    assert any(code == 503 and at > killed_at for at, code in health), "/health never reported the failover"

    failed = {task_id: r for task_id, rs in runs.items() for r in rs if r["status"] != "completed"}
    assert failed == {}, failed
    assert {task_id: len(rs) for task_id, rs in runs.items() if len(rs) != 1} == {}
    listed = (await http.get("/v1/tasks", params={"limit": 200})).json()["tasks"]
    assert len(listed) == JOBS  # no task created twice
    conversations = [rs[0]["conversation_id"] for rs in runs.values()]
    replies = await asyncio.gather(*(_assistant_messages(http, c) for c in conversations))
    assert Counter(replies) == {1: JOBS}  # one stored reply per task


async def _healthy(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/health")).status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


async def _runs_when_ended(http: httpx.AsyncClient, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each task's runs, once every task's run has ended."""
    runs: dict[str, list[dict[str, Any]]] = {}

    async def fetch(task_id: str) -> None:
        response = await http.get(f"/v1/tasks/{task_id}/runs")
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["runs"]
        if found and all(r["status"] in ("completed", "failed", "cancelled") for r in found):
            runs[task_id] = found

    async def all_ended() -> bool:
        await asyncio.gather(*(fetch(t) for t in task_ids if t not in runs))
        return len(runs) == len(task_ids)

    await wait_until(all_ended, timeout=40, interval=1.0, what="every accepted task's run to end")
    return runs


async def _assistant_messages(http: httpx.AsyncClient, conversation_id: str) -> int:
    response = await http.get(f"/v1/conversations/{conversation_id}/messages")
    assert response.status_code == 200, response.text
    return sum(1 for m in response.json()["messages"] if m["role"] == "assistant")


async def test_a_stream_created_while_a_node_joins_waits_for_it(tmp_path: Path) -> None:
    """A three-replica stream cannot be placed until the cluster's third node has joined ("no suitable peers
    for placement"): the create is retried until it has, instead of failing the process that declared it."""
    cluster = EmbeddedNatsCluster(tmp_path / "cluster", size=3).start(hold_back=1)
    try:
        bus = await Bus.connect(BusConfig(servers=cluster.urls[:2], name="test", stream_replicas=1))
        try:
            r3 = StreamConfig(name="JOINED", subjects=["joined.>"], num_replicas=3)
            with pytest.raises(BadRequestError, match="no suitable peers"):  # the server's answer, without retries
                await JetStreamContext.add_stream(bus.js, r3)
            late = cluster.nodes[-1]

            def join_later() -> None:
                time.sleep(1.0)
                late.start(timeout_s=30)

            joining = asyncio.create_task(asyncio.to_thread(join_later))
            info = await bus.js.add_stream(r3)
            await joining
            assert info.config.num_replicas == 3
        finally:
            await bus.close()
    finally:
        cluster.stop()
