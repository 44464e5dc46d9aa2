"""Secrets at rest, against PostgreSQL, nats-server and the gateway: sealed in every table that keeps
one, never in plaintext in a delivery command or a kept idempotent answer; plaintext rows from before
and rows under a rotated-out key are sealed anew at the owner's start. CORS origins."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet
from pydantic_ai.models.test import TestModel

from actors.trigger.actor import TriggerActor
from actors.trigger.config import TriggerActorConfig
from actors.trigger.signatures import sign
from bus import subjects
from bus.client import Bus
from bus.config import BusConfig
from bus.headers import Trace
from bus.secrets import PREFIX, SecretBox, SecretError, ensure_secret_key
from bus.streams import IDEMPOTENCY_BUCKET
from gateway.app import cors_config
from gateway.config import GatewayConfig, cors_origins
from schemas.tasks import IngestWebhook, RegisterTrigger, TriggerConfig, TriggerRegistered, WebhookAccepted
from tests.conftest import running, wait_until
from tests.receivers import HttpReceiver, verify_standard_webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ALLOWED = "https://app.example.org"


def box(*keys: str) -> SecretBox:
    return SecretBox(keys)


# --- the box ------------------------------------------------------------------------------------


def test_sealed_secrets_open_with_the_current_or_an_older_key() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = box(old).seal(SECRET)
    assert sealed.startswith(PREFIX) and SECRET not in sealed and SECRET.removeprefix("whsec_") not in sealed
    assert box(old).open(sealed) == SECRET
    rotated = box(new, old)
    assert rotated.open(sealed) == SECRET  # the old key still opens
    resealed = rotated.reseal(sealed)
    assert resealed is not None and box(new).open(resealed) == SECRET  # now under the new key alone
    assert rotated.reseal(resealed) is None  # current already
    assert box(new).open(SECRET) == SECRET  # plaintext from before sealing reads as it is
    assert box(new).reseal(SECRET) is not None
    with pytest.raises(SecretError, match="none of the configured keys"):
        box(new).open(sealed)


def test_a_process_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="AGENTBUS_SECRET_KEY"):
        SecretBox.from_env({})
    with pytest.raises(SecretError, match="Fernet keys"):
        SecretBox.from_env({"AGENTBUS_SECRET_KEY": "not-a-key"})
    with pytest.raises(SecretError):
        TriggerActorConfig(database_url="postgresql://unused", secrets=SecretBox.from_env({}))
    env: dict[str, str] = {}
    key = ensure_secret_key(tmp_path / ".agentbus", env)
    path = tmp_path / ".agentbus" / "secret.key"
    assert env["AGENTBUS_SECRET_KEY"] == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_secret_key(tmp_path / ".agentbus", {}) == key  # kept, not made anew
    assert SecretBox.from_env(env).open(SecretBox.from_env(env).seal("x")) == "x"


# --- webhook secrets in the trigger's table --------------------------------------------------------


async def _ingest(bus: Bus, task_id: str, secret: str, webhook_id: str) -> WebhookAccepted:
    body, stamp = b'{"a": 1}', str(int(time.time()))
    hook = IngestWebhook(
        task_id=task_id,
        webhook_id=webhook_id,
        webhook_timestamp=stamp,
        webhook_signature=sign(secret, webhook_id, stamp, body),
        body=body.decode(),
    )
    service = subjects.service(subjects.ActorName.TRIGGER, "ingest")
    return await bus.request(service, hook, WebhookAccepted, trace=Trace(tenant="webhook"))


async def test_webhook_secrets_are_sealed_and_old_rows_sealed_at_start(
    bus_config: BusConfig, database_url: str
) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    conn = await asyncpg.connect(database_url)
    bus = await Bus.connect(bus_config)
    try:
        async with running(
            TriggerActor(bus_config, TriggerActorConfig(database_url=database_url, secrets=box(old_key)))
        ):
            service = subjects.service(subjects.ActorName.TRIGGER, "register")
            registered = await bus.request(
                service,
                RegisterTrigger(task_id="hook-1", config=TriggerConfig()),
                TriggerRegistered,
                trace=Trace(tenant="acme"),
            )
            assert registered.webhook_secret is not None
            stored = await conn.fetchval("SELECT secret FROM trigger.triggers WHERE task_id = 'hook-1'")
            assert stored.startswith(PREFIX) and registered.webhook_secret not in stored
            # a row as an older version wrote it: the secret in plaintext
            await conn.execute(
                "INSERT INTO trigger.triggers (task_id, tenant, secret, config) VALUES ('legacy', 'acme', $1, '{}')",
                SECRET,
            )
        rotated = TriggerActorConfig(database_url=database_url, secrets=box(new_key, old_key))
        async with running(TriggerActor(bus_config, rotated)):
            rows = {r["task_id"]: r["secret"] for r in await conn.fetch("SELECT task_id, secret FROM trigger.triggers")}
            assert all(box(new_key).open(rows[t]) for t in ("hook-1", "legacy"))  # both under the new key now
            assert SECRET not in rows["legacy"]
            await _ingest(bus, "legacy", SECRET, "w1")  # the secret given out before still verifies
            await _ingest(bus, "hook-1", registered.webhook_secret, "w2")
    finally:
        await bus.close()
        await conn.close()


# --- through the gateway: signing secrets, idempotent answers, CORS ------------------------------


def _webhook_headers(hook_headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in hook_headers.items() if k.startswith("webhook-")}


async def test_signing_secrets_stay_sealed_from_create_to_delivery(
    start_platform: Any, bus_config: BusConfig, database_url: str
) -> None:
    platform = await start_platform(TestModel(custom_output_text="done"), background=True, cors_origins=(ALLOWED,))
    async with HttpReceiver() as receiver, platform.client() as client:
        body = {
            "task_type": "delegation",
            "prompt": "go",
            "notification_config": {"channels": ["webhook"], "webhook_url": receiver.url + "/hook"},
        }
        headers = {"Idempotency-Key": "create-1"}
        first = await client.post("/v1/tasks", json=body, headers=headers)
        assert first.status_code == 202, first.text
        secret = first.json()["notification_secret"]
        again = await client.post("/v1/tasks", json=body, headers=headers)
        assert again.json()["id"] == first.json()["id"]
        assert again.json()["notification_secret"] == secret  # the replay still answers it, once more

        async def hooked() -> bool:
            return len(receiver.requests) == 1

        await wait_until(hooked, timeout=30, what="the signed webhook")
        (hook,) = receiver.requests
        assert verify_standard_webhook(secret, _webhook_headers(hook.headers), hook.body)

        # email: one address per field, at the gateway
        for target in ("a@example.org, b@example.org", "a@example.org\nBcc: b@example.org", "A <a@example.org>"):
            bad = {**body, "notification_config": {"channels": ["email"], "email_address": target}}
            refused = await client.post("/v1/tasks", json=bad)
            assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid", refused.text

        # CORS: the allowed origin's preflight passes, another's does not
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        ok = await client.options("/v1/tasks", headers={"Origin": ALLOWED, **preflight})
        assert ok.status_code in (200, 204) and ok.headers.get("access-control-allow-origin") == ALLOWED, ok.text
        other = await client.options("/v1/tasks", headers={"Origin": "https://evil.example", **preflight})
        assert other.status_code >= 400 and "access-control-allow-origin" not in other.headers
        read = await client.get("/v1/tasks", headers={"Origin": ALLOWED})
        assert read.headers.get("access-control-allow-origin") == ALLOWED

    bus = await Bus.connect(bus_config)
    conn = await asyncpg.connect(database_url)
    try:
        kept = list((await bus.kv_entries(IDEMPOTENCY_BUCKET)).values())
        assert kept and all(secret.encode() not in v and b"whsec_" not in v for v in kept)
        stored = await conn.fetchval("SELECT notification_secret FROM scheduler.tasks")
        assert stored.startswith(PREFIX) and secret not in stored
        (command,) = [bytes(r["command"]) for r in await conn.fetch("SELECT command FROM notifier.deliveries")]
        assert secret.encode() not in command and b"whsec_" not in command
        assert json.loads(command)["sealed_signing_secret"].startswith(PREFIX)
    finally:
        await conn.close()
        await bus.close()


def test_cors_is_off_unless_origins_are_named() -> None:
    assert cors_config(GatewayConfig()) is None
    assert cors_origins({}) == ()
    assert cors_origins({"CORS_ORIGINS": "https://a.example"}) == ("https://a.example",)
    env = {"AGENTBUS_CORS_ORIGINS": " https://a.example/, https://b.example ", "CORS_ORIGINS": "https://old.example"}
    assert cors_origins(env) == ("https://a.example", "https://b.example")
    config = cors_config(GatewayConfig(cors_origins=("https://a.example",)))
    assert config is not None and config.allow_origins == ["https://a.example"]
