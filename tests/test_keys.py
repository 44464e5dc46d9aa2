"""API keys as a holder and an attacker meet them: scopes per route, expiry, list/revoke/rotate over HTTP and
the `agentbus keys` command, revocation seen by another gateway replica within moments (its open SSE
streams and WebSockets closed), single-use WebSocket tokens instead of keys in URLs, AGENTBUS_AUTH=off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from pydantic_ai.models.test import TestModel

from bus import cli, keys
from bus.client import Bus, KvChange
from bus.config import BusConfig
from bus.embedded import free_port
from bus.keys import Scope
from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.conftest import Platform, wait_until

Start = Callable[..., Awaitable[Platform]]


@contextlib.asynccontextmanager
async def gateway(bus_config: BusConfig, **config: Any) -> AsyncIterator[str]:
    """One more gateway replica on the same NATS; its base URL."""
    port = free_port()
    config.setdefault("actors", ("conversation", "executor"))
    app = create_app(GatewayConfig(port=port, **config), bus_config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    try:
        await wait_until(started, timeout=15, what="the second gateway to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 15)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_scopes_are_checked_per_route(start_platform: Start) -> None:
    platform = await start_platform()
    reader = await keys.create_key(platform.bus, tenant="t1", scopes=[Scope.READ])
    writer = await keys.create_key(platform.bus, tenant="t1", scopes=[Scope.WRITE])
    async with platform.client() as admin, platform.client(reader) as r, platform.client(writer) as w:
        conversation_id = (await admin.post("/v1/conversations", json={})).json()["id"]
        assert (await r.get(f"/v1/conversations/{conversation_id}")).status_code == 200
        refused = await r.post("/v1/conversations", json={})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "forbidden"
        assert refused.json()["error"]["details"] == {"scope": "write"}
        assert (await w.post("/v1/conversations", json={})).status_code == 201  # write implies read: it reads too
        assert (await w.get(f"/v1/conversations/{conversation_id}")).status_code == 200
        for client in (r, w):  # key management and the audit log need admin
            assert (await client.get("/v1/keys")).status_code == 403
            assert (await client.post("/v1/keys", json={})).status_code == 403
            assert (await client.get("/v1/audit")).status_code == 403
        assert (await admin.get("/v1/keys")).status_code == 200


async def test_keys_are_listed_created_rotated_and_revoked_over_http_within_their_tenant(start_platform: Start) -> None:
    platform = await start_platform()
    other_admin = await platform.key_for("t2")
    async with platform.client() as admin, platform.client(other_admin) as stranger:
        made = await admin.post("/v1/keys", json={"name": "ci", "scopes": ["read"], "expires_in_s": 3600})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["key"].startswith("ab_") and body["id"].startswith("key_") and body["scopes"] == ["read"]
        assert body["expires_at"] is not None and body["tenant"] == "t1"
        listed = (await admin.get("/v1/keys")).json()["keys"]
        assert body["id"] in [k["id"] for k in listed] and all("key" not in k for k in listed)
        assert body["id"] not in [k["id"] for k in (await stranger.get("/v1/keys")).json()["keys"]]
        # another tenant's admin cannot revoke or rotate it: it does not exist for them
        assert (await stranger.delete(f"/v1/keys/{body['id']}")).status_code == 404
        assert (await stranger.post(f"/v1/keys/{body['id']}/rotate")).status_code == 404
        async with platform.client(body["key"]) as ci:
            assert (await ci.get("/v1/agents")).status_code == 200

            rotated = await admin.post(f"/v1/keys/{body['id']}/rotate", params={"grace_s": 600})
            assert rotated.status_code == 201, rotated.text
            new = rotated.json()
            assert new["id"] != body["id"] and new["scopes"] == ["read"] and new["name"] == "ci"
            assert (await ci.get("/v1/agents")).status_code == 200  # still inside its grace period
            async with platform.client(new["key"]) as renewed:
                assert (await renewed.get("/v1/agents")).status_code == 200

            assert (await admin.delete(f"/v1/keys/{body['id']}")).status_code == 204
            refused = await ci.get("/v1/agents")
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert (await admin.delete(f"/v1/keys/{body['id']}")).status_code == 404
        assert (await admin.post("/v1/keys", json={"scopes": ["root"]})).status_code == 422
        assert (await admin.post("/v1/keys", json={"expires_in_s": 1})).status_code == 422


async def test_an_expired_key_is_refused(start_platform: Start) -> None:
    platform = await start_platform()
    key = await keys.create_key(platform.bus, tenant="t1", scopes=[Scope.ADMIN], expires_at=time.time() + 1.0)
    async with platform.client(key) as client:
        assert (await client.get("/v1/agents")).status_code == 200

        async def expired() -> bool:
            return (await client.get("/v1/agents")).status_code == 401

        await wait_until(expired, timeout=10, what="the key to expire")
        assert "expired" in (await client.get("/v1/agents")).json()["error"]["message"]


async def test_a_key_revoked_on_one_replica_is_refused_by_another_and_its_streams_close(
    start_platform: Start, bus_config: BusConfig
) -> None:
    platform = await start_platform(TestModel(custom_output_text="hi", call_tools=[]))
    victim = await keys.create_key(platform.bus, tenant="t1", name="victim", scopes=[Scope.WRITE])
    victim_id = next(s.id for s in await keys.list_keys(platform.bus, "t1") if s.record.name == "victim")
    async with gateway(bus_config) as second, httpx.AsyncClient(base_url=second, headers=bearer(victim)) as there:
        async with platform.client() as admin:
            conversation_id = (await admin.post("/v1/conversations", json={})).json()["id"]
        assert (await there.get(f"/v1/conversations/{conversation_id}")).status_code == 200
        ws_url = second.replace("http", "ws") + f"/v1/conversations/{conversation_id}/ws"
        async with (
            websockets.connect(ws_url, additional_headers=bearer(victim)) as socket,
            there.stream("GET", "/v1/notifications/events", timeout=30) as sse,
        ):
            assert sse.status_code == 200
            lines = sse.aiter_lines()
            async with platform.client() as admin:
                revoked_at = time.perf_counter()
                assert (await admin.delete(f"/v1/keys/{victim_id}")).status_code == 204

            async def refused() -> bool:
                return (await there.get("/v1/agents")).status_code == 401

            await wait_until(refused, timeout=10, interval=0.01, what="the other replica to refuse the key")
            print(f"revocation seen by the other replica after {(time.perf_counter() - revoked_at) * 1000:.0f} ms")
            async with asyncio.timeout(10):  # the SSE stream ends with an error event
                received = [line async for line in lines]
            assert "event: error" in received and any('"unauthorized"' in line for line in received)
            async with asyncio.timeout(10):
                frame = json.loads(await socket.recv())
                await socket.wait_closed()
            assert frame["error"]["code"] == "unauthorized" and socket.close_code == 4401


async def test_websockets_take_a_single_use_token_never_a_key_in_the_url(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="via token", call_tools=[]))
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        token = (await client.post("/v1/ws-tokens")).json()
        assert token["token"].startswith("wst_") and token["expires_in_s"] == 60
        listed = await client.get("/v1/agents", params={"api_key": platform.key}, headers={"Authorization": ""})
        assert listed.status_code == 401 and "not accepted in the URL" in listed.json()["error"]["message"]
    base = platform.url.replace("http", "ws") + f"/v1/conversations/{conversation_id}/ws"
    async with websockets.connect(f"{base}?token={token['token']}") as socket:
        await socket.send(json.dumps({"message": "hello"}))
        async with asyncio.timeout(15):
            events = [json.loads(await socket.recv())]
            while events[-1]["event"] not in ("completed", "failed"):
                events.append(json.loads(await socket.recv()))
        assert events[-1]["event"] == "completed"
    for url in (f"{base}?token={token['token']}", f"{base}?api_key={platform.key}"):  # used; a key in the URL
        async with websockets.connect(url) as refused:
            assert json.loads(await refused.recv())["error"]["code"] == "unauthorized"
            async with asyncio.timeout(5):
                await refused.wait_closed()
            assert refused.close_code == 4401


async def test_auth_off_acts_for_the_dev_tenant_on_loopback_only(bus_config: BusConfig) -> None:
    with pytest.raises(SystemExit, match="local development only"):
        create_app(GatewayConfig(host="0.0.0.0", auth_off=True), bus_config)
    async with gateway(bus_config, auth_off=True, auth_tenant="dev") as url, httpx.AsyncClient(base_url=url) as http:
        listed = await http.get("/v1/keys")  # no key at all
        assert listed.status_code == 200, listed.text
        made = (await http.post("/v1/keys", json={"scopes": ["read"]})).json()
        assert made["tenant"] == "dev"


def test_auth_off_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_AUTH", "off")
    monkeypatch.setenv("AGENTBUS_AUTH_TENANT", "me")
    config = GatewayConfig.from_env()
    assert config.auth_off and config.auth_tenant == "me" and config.refusal() is None
    monkeypatch.setenv("AGENTBUS_HOST", "0.0.0.0")
    assert "loopback" in (GatewayConfig.from_env().refusal() or "")


def test_a_record_from_before_scopes_loads_as_a_full_key() -> None:
    record = keys.decode(b'{"tenant":"t1","name":"old","created_at":1.0}')
    assert record.allows(Scope.ADMIN) and record.expires_at is None


async def test_the_keys_command_lists_rotates_and_revokes(
    bus_config: BusConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_URL", ",".join(bus_config.servers))
    monkeypatch.setenv("AGENTBUS_NATS_CREDENTIALS", str(bus_config.credentials_dir))

    def run(*argv: str) -> str:
        assert cli.main(["keys", *argv]) == 0
        return capsys.readouterr().out

    key = (await asyncio.to_thread(run, "create", "--tenant", "acme", "--scope", "read", "--expires", "30d")).strip()
    assert key.startswith("ab_")
    listing = await asyncio.to_thread(run, "list", "--tenant", "acme")
    [line] = [ln for ln in listing.splitlines() if ln.startswith("key_")]
    key_id = line.split()[0]
    assert "acme" in line and "read" in line and key not in listing
    rotated = (await asyncio.to_thread(run, "rotate", key_id)).strip()
    assert rotated.startswith("ab_") and rotated != key
    new_id = keys.key_id(keys.digest(rotated))
    assert key_id not in await asyncio.to_thread(run, "list")
    await asyncio.to_thread(run, "revoke", new_id)
    assert new_id not in await asyncio.to_thread(run, "list", "--tenant", "acme")
    with pytest.raises(SystemExit, match="no key"):
        await asyncio.to_thread(cli.main, ["keys", "revoke", new_id])


async def test_a_buckets_entries_are_read_whole_once_even_with_every_value_in_flight(bus_config: BusConfig) -> None:
    """Bus.kv_entries (what listing and revoking keys read): nothing for an empty bucket, the last value of
    each live key, never a deleted one; and all of them each time while the process is busy handling them.
    Bus.kv_watch (what the key, tenant and NATS-user caches follow) says it is current only after them all,
    then gives each change."""
    bus = await Bus.connect(bus_config)
    try:
        await _entries_read_whole(bus)
    finally:
        await bus.close()


async def _entries_read_whole(bus: Bus) -> None:
    assert await bus.kv_entries("ab_test_entries") == {}
    kv = await bus.key_value("ab_test_entries")
    for n in range(300):
        await kv.put(f"k{n}", b"first")
    await kv.put("k0", b"second")
    await kv.delete("k1")
    reads = await asyncio.gather(*(bus.kv_entries("ab_test_entries") for _ in range(20)))
    for entries in reads:
        assert len(entries) == 299 and entries["k0"] == b"second" and "k1" not in entries

    watches = [bus.kv_watch("ab_test_entries") for _ in range(10)]
    current = await asyncio.gather(*(_until_current(w) for w in watches))
    assert all(len(values) == 299 and values["k0"] == b"second" for values in current)
    await kv.put("k1", b"again")
    await kv.delete("k2")
    for watch in watches:
        assert await asyncio.wait_for(anext(watch), 5.0) == KvChange("k1", b"again")
        assert await asyncio.wait_for(anext(watch), 5.0) == KvChange("k2", None)
        await watch.aclose()


async def _until_current(watch: AsyncIterator[KvChange | None]) -> dict[str, bytes]:
    values: dict[str, bytes] = {}
    async for change in watch:
        if change is None:
            return values
        if change.value is None:
            values.pop(change.key, None)
        else:
            values[change.key] = change.value
    raise AssertionError("the watch ended")
