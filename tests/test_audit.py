"""The audit log: every change a key made (and the `agentbus keys` command), by key id, per tenant, in pages."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic_ai.models.test import TestModel

from bus import keys
from bus.keys import Scope
from tests.conftest import Platform, wait_until

Start = Callable[..., Awaitable[Platform]]


async def _events(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/audit", params=params)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def test_who_changed_what_and_when_per_tenant_with_paging(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="ok", call_tools=[]))
    writer_key, writer = await keys.create(platform.bus, tenant="t1", name="writer", scopes=[Scope.WRITE])
    [admin_id] = [s.id for s in await keys.list_keys(platform.bus, "t1") if s.record.name == "test"]
    started = time.time()
    async with platform.client(writer_key) as w, platform.client() as admin:
        conversation_id = (await w.post("/v1/conversations", json={})).json()["id"]
        run_id = (await w.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "x"})).json()["run_id"]
        await w.get(f"/v1/conversations/{conversation_id}")  # a read is not audited
        await w.post("/v1/conversations", json={"pattern": "oracle"})  # nor a refused change
        made = (await admin.post("/v1/keys", json={"name": "spare"})).json()
        assert (await admin.delete(f"/v1/keys/{made['id']}")).status_code == 204

        async def all_there() -> bool:
            return len(await _events(admin)) >= 4

        await wait_until(all_there, what="the audit events")
        events = await _events(admin)
        seen = [(e["key_id"], e["action"], e["route"], e["target"]) for e in events]
        assert seen == [
            (writer.id, "created", "/v1/conversations", conversation_id),
            (writer.id, "executed", "/v1/conversations/{conversation_id}/messages", run_id),
            (admin_id, "created", "/v1/keys", made["id"]),
            (admin_id, "revoked", "/v1/keys/{key_id}", made["id"]),
        ]
        assert all(e["status"] < 400 and e["at"] >= "2000" for e in events)

        first = (await admin.get("/v1/audit", params={"limit": 1})).json()
        assert [e["id"] for e in first["events"]] == [events[0]["id"]] and first["next_after"] == events[0]["id"]
        rest = await _events(admin, after=first["next_after"])
        assert [e["id"] for e in rest] == [e["id"] for e in events[1:]]
        assert len(await _events(admin, since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started - 60)))) == 4
        assert await _events(admin, since="2999-01-01T00:00:00Z") == []

    async with platform.client(await platform.key_for("t2")) as stranger:
        assert await _events(stranger) == []  # another tenant's log
