"""Dead letters over HTTP: a tenant lists, reads, discards and replays its own (and nobody else's), and a
replayed command is handled by its actor as if it had never failed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bus import keys, subjects
from bus.codec import encode
from bus.headers import Header, Trace, new_id
from bus.keys import Scope
from schemas.conversation import PostMessage
from tests.conftest import Platform, wait_until
from tests.models import replying

Start = Callable[..., Awaitable[Platform]]
CONVERSATION = subjects.ActorName.CONVERSATION


async def _letters(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/dead-letters", params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["dead_letters"]
    return found


async def _audited(client: httpx.AsyncClient) -> list[tuple[str, str, str]]:
    events = (await client.get("/v1/audit")).json()["events"]
    return [(e["action"], e["route"], e["target"]) for e in events if e["route"].startswith("/v1/dead-letters")]


async def test_an_undecodable_command_is_listed_to_its_tenant_alone_and_discarded(start_platform: Start) -> None:
    platform = await start_platform()
    other_key = await platform.key_for("t2")
    reader = await keys.create_key(platform.bus, tenant="t1", name="reader", scopes=(Scope.READ,))
    async with platform.client() as client, platform.client(other_key) as other, platform.client(reader) as ro:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        subject = subjects.conversation_command("t1", conversation_id)
        await platform.bus.js.publish(subject, b"not json at all", headers=Trace(tenant="t1").headers())

        async def dead_lettered() -> bool:
            return bool(await _letters(client))

        await wait_until(dead_lettered, timeout=20, what="the conversation actor to dead-letter it")
        (letter,) = await _letters(client)
        assert letter["actor"] == "conversation" and letter["subject"] == subject
        assert "undecodable" in letter["reason"] and letter["deliveries"] == 1
        assert letter["payload"] is None and letter["payload_text"] == "not json at all"
        assert letter["headers"][Header.TENANT.value] == "t1" and letter["dead_lettered_at"]
        one = await client.get(f"/v1/dead-letters/{letter['id']}")
        assert one.status_code == 200 and one.json() == letter
        assert await _letters(client, actor="executor") == []
        assert [x["id"] for x in await _letters(client, actor="conversation")] == [letter["id"]]

        # another tenant sees nothing of it, and can do nothing to it
        assert await _letters(other) == []
        path = f"/v1/dead-letters/{letter['id']}"
        theirs = [await other.get(path), await other.post(f"{path}/replay"), await other.delete(path)]
        assert [r.status_code for r in theirs] == [404, 404, 404]
        assert all(r.json()["error"]["code"] == "not_found" for r in theirs)
        # a read key reads, but neither replays nor discards
        assert (await ro.get(path)).status_code == 200
        assert [(await ro.post(f"{path}/replay")).status_code, (await ro.delete(path)).status_code] == [403, 403]

        discarded = await client.delete(path)
        assert discarded.status_code == 204
        assert (await client.get(path)).status_code == 404 and await _letters(client) == []
        assert (await client.delete(path)).status_code == 404

        async def audited() -> bool:
            return ("deleted", "/v1/dead-letters/{dead_letter_id}", str(letter["id"])) in await _audited(client)

        await wait_until(audited, timeout=10, what="the discard in the audit log")
        bad = [
            await client.get("/v1/dead-letters", params={"actor": "nobody"}),
            await client.get("/v1/dead-letters", params={"limit": 0}),
            await client.get("/v1/dead-letters/0"),
        ]
        assert [r.status_code for r in bad] == [422, 422, 422]


async def _dead_letter(platform: Platform, subject: str, body: bytes, *, tenant: str = "t1") -> None:
    """What the conversation actor publishes when it gives up on a message (bus/actor.py `_dead_letter`)."""
    headers = Trace(tenant=tenant).headers() | {
        Header.MSG_ID.value: f"dlq-test-{new_id()}",
        Header.DEAD_REASON.value: "failed 5 times: ConnectionError('the database was away')",
        Header.DEAD_SUBJECT.value: subject,
        Header.DEAD_STREAM_SEQ.value: "7",
        Header.DEAD_DELIVERIES.value: "5",
    }
    await platform.bus.js.publish(subjects.dead_letter(CONVERSATION), body, headers=headers)


async def test_a_replayed_turn_is_taken_by_the_conversation_and_answered(start_platform: Start) -> None:
    platform = await start_platform(replying(lambda messages, info: "answered at last"))
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        subject = subjects.conversation_command("t1", conversation_id)
        turn = PostMessage(
            conversation_id=conversation_id,
            message_id=new_id(),
            run_id=new_id(),
            content="are you there?",
            stream=False,
        )
        await _dead_letter(platform, subject, encode(turn))
        event = subjects.executor_finished("t1", new_id())  # a dead event: replaying it would re-announce it
        await _dead_letter(platform, event, b'{"type": "run_finished"}')
        await _dead_letter(platform, subjects.conversation_command("t2", conversation_id), encode(turn))  # a liar's
        newest, oldest = await _letters(client)
        assert (newest["subject"], oldest["subject"]) == (event, subject)  # newest first; the liar's is not shown
        assert oldest["payload"]["content"] == "are you there?" and oldest["deliveries"] == 5
        page = (await client.get("/v1/dead-letters", params={"limit": 1})).json()
        assert [x["id"] for x in page["dead_letters"]] == [newest["id"]] and page["next_after"] == newest["id"]
        rest = (await client.get("/v1/dead-letters", params={"limit": 1, "after": page["next_after"]})).json()
        assert [x["id"] for x in rest["dead_letters"]] == [oldest["id"]]

        refused = await client.post(f"/v1/dead-letters/{newest['id']}/replay")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
        replayed = await client.post(f"/v1/dead-letters/{oldest['id']}/replay")
        assert replayed.status_code == 202, replayed.text
        answer = replayed.json()
        assert answer["id"] == oldest["id"] and answer["subject"] == subject and answer["replayed_as"] >= 1
        assert (await client.get(f"/v1/dead-letters/{oldest['id']}")).status_code == 404  # no longer a dead letter

        async def answered() -> bool:
            messages = (await client.get(f"/v1/conversations/{conversation_id}/messages")).json()["messages"]
            return [m["content"] for m in messages] == ["are you there?", "answered at last"]

        await wait_until(answered, timeout=20, what="the replayed turn to be answered")
        assert [x["id"] for x in await _letters(client)] == [newest["id"]]

        async def audited() -> bool:
            return ("executed", "/v1/dead-letters/{dead_letter_id}/replay", str(oldest["id"])) in await _audited(client)

        await wait_until(audited, timeout=10, what="the replay in the audit log")
