"""Notifications over HTTP: a tenant's in-app notifications as a resumable SSE stream and a list, and a
research job's deliveries listed and retried against a real HTTP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Platform, sse_messages, wait_until
from tests.models import replying
from tests.receivers import HttpReceiver
from tests.test_research import Researchers

Start = Callable[..., Awaitable[Platform]]


async def _delegate(client: httpx.AsyncClient, prompt: str) -> str:
    """A delegated task whose result goes to the in-app channel; its run's id."""
    body = {"task_type": "delegation", "prompt": prompt, "notification_config": {"channels": ["in_app"]}}
    response = await client.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["last_runs"][0]["id"]
    return run_id


def _stream(
    client: httpx.AsyncClient, **kwargs: Any
) -> contextlib.AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
    return sse_messages(client, "/v1/notifications/events", **kwargs)


async def _take(events: AsyncIterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(anext(events), 20) for _ in range(n)]


async def test_in_app_notifications_stream_resume_and_list_only_for_their_tenant(start_platform: Start) -> None:
    platform = await start_platform(replying(lambda messages, info: "the answer"), background=True)
    other_key = await platform.key_for("t2")
    async with platform.client() as client, platform.client(other_key) as other:
        theirs = await _delegate(other, "their task")
        first = await _delegate(client, "first task")

        async with _stream(client) as events:  # replays the last 24 hours, then follows
            (seen_first,) = await _take(events, 1)
            second = await _delegate(client, "second task")
            (seen_second,) = await _take(events, 1)  # live
        async with _stream(client, headers={"Last-Event-ID": str(seen_first["id"])}) as events:
            (resumed,) = await _take(events, 1)
        async with _stream(client, params={"since": datetime.now(UTC).isoformat()}) as events:
            third = await _delegate(client, "third task")
            (after_now,) = await _take(events, 1)  # nothing older than `since`

        listed = (await client.get("/v1/notifications")).json()
        page_1 = (await client.get("/v1/notifications", params={"limit": 2})).json()
        page_2 = (await client.get("/v1/notifications", params={"limit": 2, "after": page_1["next_after"]})).json()
        later = datetime.now(UTC) + timedelta(seconds=1)
        none_yet = (await client.get("/v1/notifications", params={"since": later.isoformat()})).json()

        async def their_list() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (await other.get("/v1/notifications")).json()["notifications"]
            return found

        await wait_until(lambda: _non_empty(their_list), timeout=20, what="t2's notification")
        their_notes = await their_list()
        bad_resume = await client.get("/v1/notifications/events", headers={"Last-Event-ID": "soon"})

    assert [e["data"]["task_run_id"] for e in (seen_first, seen_second, after_now)] == [first, second, third]
    assert seen_first["event"] == "in_app_notification" and seen_first["data"]["body"].strip() == "the answer"
    assert seen_first["data"]["delivery_id"] == f"{first}-in_app"
    assert resumed == seen_second  # Last-Event-ID resumes right after that event
    # the list: oldest first, paged with `after`, ids the stream's
    notes = listed["notifications"]
    assert [n["task_run_id"] for n in notes] == [first, second, third] and listed["next_after"] is None
    assert [n["id"] for n in notes[:2]] == [seen_first["id"], seen_second["id"]]
    assert notes[0]["title"] and notes[0]["body"].strip() == "the answer" and notes[0]["published_at"]
    assert page_1["notifications"] == notes[:2] and page_1["next_after"] == notes[1]["id"]
    assert page_2 == {"notifications": notes[2:], "next_after": None}
    assert none_yet == {"notifications": [], "next_after": None}
    # each tenant sees its own notifications only
    assert [n["task_run_id"] for n in their_notes] == [theirs]
    assert bad_resume.status_code == 422 and bad_resume.json()["error"]["code"] == "invalid"


async def _non_empty(read: Callable[[], Awaitable[list[dict[str, Any]]]]) -> bool:
    return bool(await read())


async def test_a_research_jobs_failed_delivery_is_listed_and_a_retry_sends_it_again(start_platform: Start) -> None:
    platform = await start_platform(Researchers(plan=[], follow_up=[]).model(), background=True)
    other_key = await platform.key_for("t2")
    async with HttpReceiver(fail=1000, fail_status=503) as receiver, platform.client() as client:
        config = {"channels": ["webhook", "in_app"], "webhook_url": f"{receiver.url}/research"}
        body = {"question": "What is hydro power?", "notification_config": config}
        started = await client.post("/v1/research", json=body)
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]

        async def statuses() -> dict[str, str]:
            response = await client.get(f"/v1/research/{job_id}/deliveries")
            assert response.status_code == 200, response.text
            return {d["channel"]: d["status"] for d in response.json()["deliveries"]}

        async def webhook_is(status: str) -> bool:
            return (await statuses()).get("webhook") == status

        await wait_until(lambda: webhook_is("failed"), timeout=30, what="the webhook delivery to fail")
        failed = (await client.get(f"/v1/research/{job_id}/deliveries")).json()["deliveries"]
        webhook = next(d for d in failed if d["channel"] == "webhook")
        in_app = next(d for d in failed if d["channel"] == "in_app")

        receiver.fail = 0
        retried = await client.post(f"/v1/research/{job_id}/deliveries/{webhook['id']}/retry")
        await wait_until(lambda: webhook_is("delivered"), timeout=30, what="the retried delivery")
        delivered = await client.get(f"/v1/research/{job_id}/deliveries")
        again = await client.post(f"/v1/research/{job_id}/deliveries/{webhook['id']}/retry")
        not_its = await client.post(f"/v1/research/{job_id}/deliveries/{job_id}-email/retry")
        async with platform.client(other_key) as other:
            foreign_list = await other.get(f"/v1/research/{job_id}/deliveries")
            foreign_retry = await other.post(f"/v1/research/{job_id}/deliveries/{webhook['id']}/retry")

    assert webhook["id"] == f"{job_id}-webhook" and webhook["task_run_id"] == job_id
    assert len(webhook["attempts"]) == 4 and not any(a["ok"] for a in webhook["attempts"])
    assert [a["status_code"] for a in webhook["attempts"]] == [503] * 4
    assert in_app["status"] == "delivered"
    assert retried.status_code == 202 and retried.json()["id"] == webhook["id"]
    (hook,) = receiver.requests  # the retry reached the receiver, once
    assert hook.path == "/research" and hook.headers["webhook-id"] == webhook["id"]
    assert json.loads(hook.body)["data"]["job_id"] == job_id
    final = next(d for d in delivered.json()["deliveries"] if d["channel"] == "webhook")
    assert final["status"] == "delivered" and final["attempts"][-1]["ok"] and len(final["attempts"]) == 5
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert not_its.status_code == 404 and not_its.json()["error"]["code"] == "not_found"
    assert foreign_list.status_code == 404 and foreign_list.json()["error"]["code"] == "not_found"
    assert foreign_retry.status_code == 404


async def test_a_task_run_waiting_for_approval_tells_the_tasks_channels_then_goes_on_when_approved(
    start_platform: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bus import subjects
    from bus.headers import Trace
    from schemas.approvals import ApprovalView, DecideApproval, Decision
    from tests.models import mailer
    from tests.test_approvals import AGENTS

    monkeypatch.setenv("AGENTBUS_TEST_OUTBOX", str(tmp_path / "outbox.jsonl"))
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    platform = await start_platform(mailer(), background=True, agents_file=agents)
    async with platform.client() as client, _stream(client) as events:
        body = {
            "task_type": "delegation",
            "agent": "mailer",
            "prompt": "mail them",
            "notification_config": {"channels": ["in_app"]},
        }
        response = await client.post("/v1/tasks", json=body)
        assert response.status_code == 202, response.text
        run_id = response.json()["last_runs"][0]["id"]
        (notice,) = await _take(events, 1)
        text = json.dumps(notice)
        assert "Approval needed: send_email" in text and "approval_requested" in text and "POST /v1/approvals/" in text
        approvals = notice["data"]["payload"]["approvals"] if "data" in notice else notice["payload"]["approvals"]
        assert {a["run_id"] for a in approvals} == {run_id} and len(approvals) == 2
        service = subjects.service(subjects.ActorName.EXECUTOR, "decide_approval")
        for a in approvals:
            decision = DecideApproval(approval_id=a["id"], decision=Decision.APPROVE, decided_by="test")
            await platform.bus.request(service, decision, ApprovalView, trace=Trace(tenant=a["tenant"]))
        (finished,) = await _take(events, 1)
    assert "completed" in json.dumps(finished) and "sent to a@example.com" in json.dumps(finished)


async def test_a_research_sub_run_waiting_for_approval_tells_the_jobs_channels(start_platform: Start) -> None:
    """The research actor follows `executor.waiting`: a sub-run of a job (its parent) that parks on approvals is
    told through the job's channels. (The parking itself is tests/test_approvals.py's.)"""
    from bus import subjects
    from bus.headers import Trace
    from schemas.approvals import Approval, RunWaiting

    platform = await start_platform(Researchers(plan=[], follow_up=[]).model(), background=True)
    async with platform.client() as client, _stream(client) as events:
        body = {"question": "What is tide power?", "notification_config": {"channels": ["in_app"]}}
        started = await client.post("/v1/research", json=body)
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]
        tenant = (await client.get(f"/v1/research/{job_id}")).json()["tenant"]
        approval = Approval(
            id="apr_1", tenant=tenant, run_id=f"{job_id}-q1", tool_name="send_email", tool_call_id="c1",
            args='{"to": "a@example.com"}', args_sha256="0" * 64, agent="researcher", parent_run_id=job_id,
            created_at=datetime.now(UTC),
        )  # fmt: skip
        waiting = RunWaiting(run_id=approval.run_id, approvals=[approval], parent_run_id=job_id)
        subject = subjects.executor_waiting(tenant, approval.run_id)
        await platform.bus.publish(subject, waiting, trace=Trace(tenant=tenant), msg_id="w1")
        seen = [json.dumps(e) for e in await _take(events, 2)]
    notice = [s for s in seen if "Approval needed" in s]
    assert len(notice) == 1 and f"research job {job_id}" in notice[0] and "apr_1" in notice[0]
