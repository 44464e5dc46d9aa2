"""Tenant isolation at the HTTP edge, tried as an attacker would: tenant A's admin key on every operation of
the gateway's own OpenAPI document that takes an id in its path, filled with ids of tenant B's resources
(its conversation, run, task, task run, delivery, research job, document, key, dead letter, approval).
Every call answers 404 and nothing of B's changes. The operations come from the document, so an endpoint
added tomorrow is tried the day it is added; one with a path parameter this test cannot fill fails the test
until it can."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo

from bus import subjects
from bus.headers import Trace
from tests.conftest import Platform, wait_until
from tests.models import streamed

Start = Callable[..., Awaitable[Platform]]

# Path parameters that name no tenant's resource: a catalog name (an agent pipeline, a tool) is the
# platform's, the same for every tenant. The route is still tried with A's key (it must not 5xx).
NOT_TENANT_OWNED = {"name"}
# A route that takes no API key at all: the signed webhook answers 401 to a caller without B's secret.
PUBLIC = {("post", "/v1/tasks/webhooks/{task_id}"): 401}
BODIES: dict[str, Any] = {  # a valid body where one is needed, so the answer is about the id
    "/v1/conversations/{conversation_id}/messages": {"message": "hello from A"},
    "/v1/conversations/{conversation_id}/context": {"context": {"x": 1}},
    "/v1/tasks/{task_id}": {"prompt": "changed by A"},
    "/v1/runs/{run_id}/messages": {"content": "steered by A"},
    "/v1/approvals/{approval_id}": {"decision": "approve"},
}
AGENTS = """
[agents.mailer]
tools = ["python:tests.approval_tools:send_email"]
requires_approval = ["send_email"]
"""


def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """B's answer; the mailer agent first asks to send an email (a call that waits for B's approval)."""
    if any(t.name == "send_email" for t in info.function_tools) and len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("send_email", {"to": "b@example.com", "subject": "B's"})])
    return ModelResponse(parts=[TextPart("B's answer")])


async def _tenant_b(platform: Platform, client: httpx.AsyncClient) -> dict[str, str]:
    """B's resources, one of every kind a path can name."""
    conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
    reply = await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "hi"})
    assert reply.status_code == 200, reply.text
    task = await client.post(
        "/v1/tasks",
        json={"task_type": "delegation", "prompt": "B's", "notification_config": {"channels": ["in_app"]}},
    )
    assert task.status_code == 202, task.text
    task_run_id = task.json()["last_runs"][0]["id"]

    async def delivered() -> bool:
        run = (await client.get(f"/v1/task-runs/{task_run_id}")).json()
        return bool(run.get("deliveries"))

    await wait_until(delivered, timeout=30, what="B's task run and its delivery")
    run = (await client.get(f"/v1/task-runs/{task_run_id}")).json()
    job = await client.post("/v1/research", json={"question": "What is B researching?"})
    assert job.status_code == 202, job.text
    document = await client.post("/v1/documents", json={"title": "B's", "content": "B's private notes."})
    assert document.status_code == 201, document.text
    key = await client.post("/v1/keys", json={"name": "B's other key"})
    assert key.status_code == 201, key.text
    # a turn of B's that the conversation actor cannot decode: B's dead letter
    subject = subjects.conversation_command("tenant-b", conversation_id)
    await platform.bus.js.publish(subject, b"B's garbage", headers=Trace(tenant="tenant-b").headers())

    async def dead_lettered() -> bool:
        return bool((await client.get("/v1/dead-letters")).json()["dead_letters"])

    await wait_until(dead_lettered, timeout=20, what="B's dead letter")
    letter = (await client.get("/v1/dead-letters")).json()["dead_letters"][0]
    mailing = await client.post("/v1/tasks", json={"task_type": "delegation", "agent": "mailer", "prompt": "mail"})
    assert mailing.status_code == 202, mailing.text

    async def asked() -> bool:
        return bool((await client.get("/v1/approvals")).json()["approvals"])

    await wait_until(asked, timeout=30, what="B's approval")
    approval = (await client.get("/v1/approvals")).json()["approvals"][0]
    return {
        "conversation_id": conversation_id,
        "run_id": reply.json()["run_id"],
        "task_id": task.json()["id"],
        "task_run_id": task_run_id,
        "delivery_id": run["deliveries"][0]["id"],
        "job_id": job.json()["id"],
        "document_id": document.json()["id"],
        "key_id": key.json()["id"],
        "dead_letter_id": str(letter["id"]),
        "approval_id": approval["id"],
    }


async def test_tenant_a_on_every_endpoint_with_tenant_b_ids_gets_404(start_platform: Start, tmp_path: Path) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    platform = await start_platform(streamed(_model), background=True, agents_file=agents)
    key_b = await platform.key_for("tenant-b")
    async with platform.client() as a, platform.client(key_b) as b:
        ids = await _tenant_b(platform, b)
        document = (await a.get("/schema/openapi.json")).json()
        before = {name: (await b.get(path)).json() for name, path in _readable(ids).items()}

        tried: list[str] = []
        unfillable: list[str] = []
        answers: dict[str, int] = {}
        for template, item in document["paths"].items():
            params = re.findall(r"{(\w+)}", template)
            if not params:
                continue
            for method in (m for m in item if m in ("get", "post", "put", "patch", "delete")):
                label = f"{method.upper()} {template}"
                if any(p not in ids and p not in NOT_TENANT_OWNED for p in params):
                    unfillable.append(label)
                    continue
                if any(p in NOT_TENANT_OWNED for p in params):
                    continue  # not B's: nothing to isolate (covered by the schemathesis run)
                path = template.format(**ids)
                request = a.build_request(
                    method.upper(), path, json=BODIES.get(template, {}) if method != "get" else None
                )
                if "text/event-stream" in str(item[method].get("responses", {})):
                    request.headers["Accept"] = "text/event-stream"
                response = await a.send(request)
                answers[label] = response.status_code
                tried.append(label)

        assert unfillable == [], f"new path parameters to give tenant B's ids for: {unfillable}"
        expected = {label: PUBLIC.get((label.split()[0].lower(), label.split(" ", 1)[1]), 404) for label in tried}
        assert answers == expected
        print(f"tenant A on {len(tried)} endpoint calls with tenant B's ids: {sorted(set(answers.values()))}")
        assert len(tried) >= 25  # every id-taking route of the document, not a handful

        after = {name: (await b.get(path)).json() for name, path in _readable(ids).items()}
        assert after == before  # nothing of B's changed
        assert (await b.get(f"/v1/tasks/{ids['task_id']}")).json()["prompt"] == "B's"


def _readable(ids: dict[str, str]) -> dict[str, str]:
    """B's resources as B reads them, to see that A changed none."""
    return {
        "conversation": f"/v1/conversations/{ids['conversation_id']}",
        "messages": f"/v1/conversations/{ids['conversation_id']}/messages",
        "task": f"/v1/tasks/{ids['task_id']}",
        "document": f"/v1/documents/{ids['document_id']}",
        "approval": f"/v1/approvals/{ids['approval_id']}",
        "keys": "/v1/keys",
        "dead letters": "/v1/dead-letters",
    }
