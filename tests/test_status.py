"""GET /v1/status, the operator's view: every replica of every actor (not just the first to answer) with its
health, the consumers' backlogs, the caller tenant's dead letters per actor, and the circuit breakers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic_ai.models.test import TestModel

from actors.conversation.actor import ConversationActor
from actors.conversation.config import ConversationConfig
from bus import subjects
from bus.config import BusConfig
from bus.headers import Trace
from tests.conftest import Platform, running, wait_until

Start = Callable[..., Awaitable[Platform]]


async def _status(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/status")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def test_status_shows_every_replica_the_backlogs_and_the_tenants_dead_letters(
    start_platform: Start, bus_config: BusConfig, database_url: str
) -> None:
    platform = await start_platform(background=True)
    second = ConversationActor(bus_config, ConversationConfig(database_url=database_url))
    other_key = await platform.key_for("t2")
    async with running(second), platform.client() as client, platform.client(other_key) as other:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        subject = subjects.conversation_command("t1", conversation_id)
        await platform.bus.js.publish(subject, b"not a turn", headers=Trace(tenant="t1").headers())

        async def dead_letter_counted() -> bool:
            counts: dict[str, int] = (await _status(client))["dead_letters"]
            return counts == {"conversation": 1}

        await wait_until(dead_letter_counted, timeout=20, what="t1's dead letter in the status")
        status = await _status(client)
        actors = status["actors"]
        assert set(actors) == {"conversation", "executor", "scheduler", "trigger", "notifier", "research"}
        assert all(a["ok"] for a in actors.values()), actors
        conversation = actors["conversation"]["replicas"]
        assert len(conversation) == 2 and second.instance in {r["instance"] for r in conversation}
        assert all(r["ok"] and r["checks"] == {"postgres": "ok"} for r in conversation), conversation
        assert all(len(a["replicas"]) == 1 for name, a in actors.items() if name != "conversation")

        backlogs = {(c["stream"], c["consumer"]): c for c in status["consumers"]}
        assert {("AB_CONVERSATION_CMD", "conversation-cmd"), ("AB_EXECUTOR_CMD", "executor-cmd")} <= set(backlogs)
        assert ("AB_EXECUTOR_EVT", "conversation-runs") in backlogs
        for c in backlogs.values():
            assert min(c["pending"], c["ack_pending"], c["redelivered"]) >= 0
        assert set(status["models"]) == {"open", "breakers"}

        assert (await _status(other))["dead_letters"] == {}  # t2 counts its own: none

    async def one_replica_left() -> bool:  # the stopped replica is no longer found
        return len((await _status(client))["actors"]["conversation"]["replicas"]) == 1

    async with platform.client() as client:
        await wait_until(one_replica_left, timeout=10, what="the stopped replica to leave the status")


async def test_stats_count_the_tenants_conversations_tasks_runs_and_tokens(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="counted", call_tools=[]), background=True)
    other_key = await platform.key_for("t2")
    async with platform.client() as client, platform.client(other_key) as other:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        for text in ("one", "two"):
            reply = await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": text})
            assert reply.status_code == 200, reply.text
        await client.post("/v1/conversations", json={})
        body = {"task_type": "scheduled", "prompt": "later", "schedule_expression": "0 3 * * *"}
        created = await client.post("/v1/tasks", json=body)
        assert created.status_code in (201, 202), created.text
        assert (await client.post(f"/v1/tasks/{created.json()['id']}/disable")).status_code == 200
        await client.post("/v1/tasks", json={**body, "prompt": "also later"})

        stats = (await client.get("/v1/stats")).json()
        assert stats["conversations"] == 2
        assert stats["tasks"] == {"total": 2, "enabled": 1}
        assert stats["runs"] == {"total": 2, "by_status": {"completed": 2}, "last_24h": 2}
        tokens = stats["tokens"]
        assert tokens["input"] > 0 and tokens["output"] > 0 and tokens["total"] == tokens["input"] + tokens["output"]
        assert stats["cost_usd"] >= 0
        assert stats["rates"]["runs_per_hour_24h"] == round(2 / 24, 3)
        assert stats["rates"]["tokens_per_hour_24h"] == round(tokens["total"] / 24, 3)

        theirs = (await other.get("/v1/stats")).json()  # t2 has nothing yet
        assert (theirs["conversations"], theirs["tasks"]["total"], theirs["runs"]["total"]) == (0, 0, 0)
        assert theirs["tokens"]["total"] == 0 and theirs["rates"]["runs_per_hour_24h"] == 0
