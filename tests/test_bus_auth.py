"""The authenticated bus, tried as an attacker would: no credential, each process's credential, and a
tenant's own NATS user, against a real nats-server running the permissions `agentbus run` gives it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NatsClient

from bus import keys, nats_users, subjects
from bus.client import Bus
from bus.config import BusConfig
from bus.credentials import Role, ensure_seeds, read_seed, seed_path
from bus.embedded import EmbeddedNats, free_port
from bus.headers import Header, new_id
from bus.nats_users import NatsUser, NatsUserSync
from bus.permissions import server_authorization
from bus.streams import ALL_STREAMS, DLQ, RUN_OUT
from schemas.conversation import PostMessage
from tests.conftest import running, wait_until

pytestmark = pytest.mark.bus_violations  # these tests are refused on purpose

PROCESS_ROLES = [role for role in Role if role is not Role.ADMIN]


class Session:
    """A raw nats-py connection and the permission errors the server sent it."""

    def __init__(self, nc: NatsClient, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def refused(self, what: str, *, timeout: float = 2.0) -> bool:
        """Whether the server answers with a permissions violation naming `what`."""

        async def said() -> bool:
            return any("permissions violation" in e and what.lower() in e for e in self.errors)

        try:
            await wait_until(said, timeout=timeout, what=f"a permissions violation for {what}")
        except AssertionError:
            return False
        return True

    async def stored(self, subject: str, payload: bytes = b"{}", headers: dict[str, str] | None = None) -> bool:
        """Publish into JetStream and say whether the stream acknowledged it."""
        try:
            reply = await self.nc.request(subject, payload, timeout=1.0, headers=headers)
        except nats.errors.TimeoutError:
            return False
        return "stream" in json.loads(reply.data)


async def connect(url: str, seed: Path | None, *, inbox: str | None = None) -> Session:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    nc = await nats.connect(
        url,
        nkeys_seed_str=read_seed(seed).decode() if seed else None,
        inbox_prefix=inbox or "_INBOX",
        allow_reconnect=False,
        connect_timeout=3,
        error_cb=on_error,
    )
    return Session(nc, errors)


@pytest.fixture
async def admin(bus_config: BusConfig) -> AsyncIterator[Bus]:
    bus = await Bus.connect(bus_config)
    yield bus
    await bus.close()


async def test_a_client_without_credentials_is_refused(nats_server: EmbeddedNats, admin: Bus) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(nats_server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)


async def test_a_seed_the_server_does_not_know_is_refused(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    ensure_seeds(tmp_path / "other")
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await connect(nats_server.url, seed_path(tmp_path / "other", Role.ADMIN))


@pytest.mark.parametrize("role", PROCESS_ROLES, ids=str)
async def test_no_process_can_delete_or_purge_a_stream(
    role: Role, nats_server: EmbeddedNats, nats_credentials: Path, admin: Bus
) -> None:
    me = await connect(nats_server.url, seed_path(nats_credentials, role), inbox=subjects.inbox_prefix(role))
    try:
        await me.nc.publish(
            subjects.js_stream_api("DELETE", RUN_OUT.name), b"", reply=f"{subjects.inbox_prefix(role)}.x"
        )
        assert await me.refused(subjects.js_stream_api("DELETE", RUN_OUT.name))
        await me.nc.publish(subjects.js_stream_api("PURGE", DLQ.name), b"{}", reply=f"{subjects.inbox_prefix(role)}.x")
        assert await me.refused(subjects.js_stream_api("PURGE", DLQ.name))
        await me.nc.publish(subjects.js_stream_api("UPDATE", RUN_OUT.name), b"{}")
        assert await me.refused(subjects.js_stream_api("UPDATE", RUN_OUT.name))
    finally:
        await me.nc.close()
    for spec in ALL_STREAMS:  # all still there
        await admin.js.stream_info(spec.name)


@pytest.mark.parametrize("role", PROCESS_ROLES, ids=str)
async def test_only_the_gateway_touches_the_api_key_store(
    role: Role, nats_server: EmbeddedNats, nats_credentials: Path, admin: Bus
) -> None:
    key = await keys.create_key(admin, tenant="acme")
    digest = next(iter(await admin.kv_entries(keys.BUCKET)))
    me = await connect(nats_server.url, seed_path(nats_credentials, role), inbox=subjects.inbox_prefix(role))
    try:
        forged = subjects.kv_writes(keys.BUCKET).replace(">", "forged")
        wrote = await me.stored(forged, msgspec.json.encode(keys.KeyRecord(tenant="b", name="x", created_at=0)))
        read = await me.nc.request(
            subjects.js_api("DIRECT", "GET", f"KV_{keys.BUCKET}", f"$KV.{keys.BUCKET}.{digest}"), b"", timeout=1.0
        )
        assert read.data == b"" or role is Role.GATEWAY  # a direct get answers with headers only
    except nats.errors.TimeoutError:
        read = None
    finally:
        await me.nc.close()
    if role is Role.GATEWAY:
        assert wrote and read is not None
        assert await keys.lookup(admin, key) is not None
    else:
        assert not wrote and read is None
        assert await me.refused(f"$kv.{keys.BUCKET}", timeout=0.1)


@pytest.mark.parametrize("role", PROCESS_ROLES, ids=str)
async def test_no_process_reads_another_ones_replies_or_every_tenants_output(
    role: Role, nats_server: EmbeddedNats, nats_credentials: Path
) -> None:
    me = await connect(nats_server.url, seed_path(nats_credentials, role), inbox=subjects.inbox_prefix(role))
    other = Role.EXECUTOR if role is not Role.EXECUTOR else Role.GATEWAY
    try:
        await me.nc.subscribe(f"{subjects.inbox_prefix(other)}.>")
        assert await me.refused(f'subscription to "{subjects.inbox_prefix(other)}.>'.lower())
        await me.nc.subscribe(subjects.run_outputs())
        assert await me.refused(f'subscription to "{subjects.run_outputs()}"')
        await me.nc.subscribe(">")
        assert await me.refused('subscription to ">"')
    finally:
        await me.nc.close()


# Which process may do what the attacker did: publish a chat message as a tenant, read a
# conversation's stored history (the conversation actor's service), create a consumer on the run output.
ATTACKS = {
    "post a chat message": (subjects.conversation_command("b", "c1"), {Role.GATEWAY, Role.SCHEDULER}),
    "read stored history": (
        subjects.service(subjects.ActorName.CONVERSATION, "messages"),
        {Role.GATEWAY, Role.EXECUTOR, Role.SCHEDULER},
    ),
    "start a run": (
        subjects.executor_command("b", "r1"),
        {Role.GATEWAY, Role.CONVERSATION, Role.EXECUTOR, Role.SCHEDULER},
    ),
    # a platform sub-run skips the tenant's agent check: only its own starter may publish one
    "start a pipeline step": (subjects.executor_subrun_command("b", "r1", subjects.RunOrigin.SUBRUN), {Role.EXECUTOR}),
    "start a research sub-run": (
        subjects.executor_subrun_command("b", "r1", subjects.RunOrigin.RESEARCH),
        {Role.RESEARCH},
    ),
    "send an email": (subjects.notifier_command("b", "d1"), {Role.SCHEDULER, Role.RESEARCH, Role.NOTIFIER}),
}


@pytest.mark.parametrize("attack", ATTACKS, ids=str)
async def test_each_process_may_do_only_what_it_needs(
    attack: str, nats_server: EmbeddedNats, nats_credentials: Path
) -> None:
    subject, allowed = ATTACKS[attack]
    for role in PROCESS_ROLES:
        me = await connect(nats_server.url, seed_path(nats_credentials, role), inbox=subjects.inbox_prefix(role))
        try:
            await me.nc.publish(subject, b"{}")
            refused = await me.refused(f'publish to "{subject}"', timeout=0.5 if role in allowed else 2.0)
        finally:
            await me.nc.close()
        assert refused is (role not in allowed), f"{role} {'was refused' if refused else 'may'} {attack}"


async def test_notifier_cannot_consume_the_run_output(nats_server: EmbeddedNats, nats_credentials: Path) -> None:
    me = await connect(nats_server.url, seed_path(nats_credentials, Role.NOTIFIER), inbox="_INBOX.notifier")
    try:
        create = subjects.js_api("CONSUMER", "CREATE", RUN_OUT.name)
        await me.nc.publish(create, b"{}", reply="_INBOX.notifier.x")
        assert await me.refused(f'publish to "{create}"')
    finally:
        await me.nc.close()


# --- tenants' own NATS users --------------------------------------------------------------------


@pytest.fixture
async def tenant_users(nats_server: EmbeddedNats, nats_credentials: Path, admin: Bus) -> AsyncIterator[Bus]:
    """The server follows `ab_nats_users` as `agentbus run` makes it (bus/nats_server.py)."""
    roles = ensure_seeds(nats_credentials)

    async def apply(users: list[NatsUser]) -> None:
        await asyncio.to_thread(nats_server.reauthorize, server_authorization(roles, users))

    sync = NatsUserSync(admin, apply)
    await sync.start()
    yield admin
    await sync.stop()


async def tenant_session(url: str, seed: str, tenant: str) -> Session:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    async def connected() -> NatsClient:
        return await nats.connect(
            url,
            nkeys_seed_str=seed,
            inbox_prefix=subjects.tenant_inbox_prefix(tenant),
            allow_reconnect=False,
            connect_timeout=2,
            error_cb=on_error,
        )

    deadline = time.monotonic() + 10
    while True:  # the server reloads its users a moment after the record is written
        try:
            return Session(await connected(), errors)
        except (nats.errors.Error, OSError, TimeoutError):  # refused, or the connection cut by a reload
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_tenant_user_publishes_only_its_commands_and_reads_only_its_output(
    nats_server: EmbeddedNats, tenant_users: Bus
) -> None:
    user, seed = await nats_users.create_user(tenant_users, tenant="acme")
    assert user.tenant == "acme" and seed.startswith("SU")
    me = await tenant_session(nats_server.url, seed, "acme")
    try:
        mine = await me.nc.subscribe(subjects.run_output("acme", "r1"))
        await me.nc.flush()
        await tenant_users.js.publish(subjects.run_output("acme", "r1"), b'{"type":"x"}')
        assert (await mine.next_msg(timeout=3)).data == b'{"type":"x"}'

        headers = {Header.TENANT.value: "acme"}
        assert await me.stored(subjects.conversation_command("acme", "c1"), headers=headers)

        assert not await me.stored(subjects.conversation_command("other", "c1"), headers={Header.TENANT.value: "other"})
        assert await me.refused(f'publish to "{subjects.conversation_command("other", "c1")}"')
        await me.nc.subscribe(subjects.tenant_run_outputs("other"))
        assert await me.refused(f'subscription to "{subjects.tenant_run_outputs("other")}"')
        await me.nc.subscribe(subjects.run_outputs())
        assert await me.refused(f'subscription to "{subjects.run_outputs()}"')
        await me.nc.publish(subjects.js_api("INFO"), b"")
        assert await me.refused('publish to "$js.api.info"')
        await me.nc.publish(subjects.service(subjects.ActorName.CONVERSATION, "messages"), b"{}")
        assert await me.refused('publish to "ab.conversation.svc.messages"')
    finally:
        await me.nc.close()


async def test_a_revoked_tenant_user_is_disconnected(nats_server: EmbeddedNats, tenant_users: Bus) -> None:
    user, seed = await nats_users.create_user(tenant_users, tenant="acme")
    me = await tenant_session(nats_server.url, seed, "acme")
    assert [u.public_key for u in await nats_users.list_users(tenant_users, tenant="acme")] == [user.public_key]
    assert await nats_users.revoke_user(tenant_users, user.public_key)

    async def closed() -> bool:
        return me.nc.is_closed

    await wait_until(closed, timeout=10, what="the revoked user's connection to close")
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(nats_server.url, nkeys_seed_str=seed, allow_reconnect=False, connect_timeout=2)


async def test_a_command_whose_tenant_header_differs_from_its_subject_is_dead_lettered(
    bus_config: BusConfig, database_url: str, admin: Bus
) -> None:
    from actors.conversation.actor import ConversationActor
    from actors.conversation.config import ConversationConfig

    dead = await admin.nc.subscribe(subjects.dead_letter(subjects.ActorName.CONVERSATION))
    actor = ConversationActor(bus_config, ConversationConfig(database_url=database_url))
    async with running(actor):
        post = PostMessage(conversation_id="c1", message_id=new_id(), run_id=new_id(), content="hi")
        await admin.js.publish(
            subjects.conversation_command("acme", "c1"),
            msgspec.json.encode(post),
            headers={Header.TENANT.value: "other"},
        )
        letter = await dead.next_msg(timeout=10)
    assert letter.headers is not None
    assert "tenant mismatch" in letter.headers[Header.DEAD_REASON.value]
    assert letter.headers[Header.DEAD_SUBJECT.value] == subjects.conversation_command("acme", "c1")


async def test_agentbus_nats_server_serves_the_roles_and_the_tenant_users_the_cli_makes(tmp_path: Path) -> None:
    """compose.yaml's path: `agentbus credentials`, `agentbus nats-server`, `agentbus keys create --nats`."""
    agentbus = (sys.executable, "-m", "bus.cli")
    creds = tmp_path / "creds"
    made = await asyncio.to_thread(
        subprocess.run, [*agentbus, "credentials", "--dir", str(creds)], capture_output=True, text=True, check=True
    )
    assert "admin.nk" in made.stdout and seed_path(creds, Role.EXECUTOR).exists()
    port = free_port()
    serve = ("nats-server", "--data", str(tmp_path / "data"), "--credentials", str(creds), "--host", "127.0.0.1")
    server = await asyncio.create_subprocess_exec(*agentbus, *serve, "--port", str(port), stdout=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                executor = await connect(url, seed_path(creds, Role.EXECUTOR), inbox="_INBOX.executor")
                break
            except (OSError, nats.errors.Error):
                if time.monotonic() > deadline or server.returncode is not None:
                    raise
                await asyncio.sleep(0.2)
        await executor.nc.close()
        env = {**os.environ, "NATS_URL": url, "NATS_NKEY_SEED_FILE": str(seed_path(creds, Role.ADMIN))}
        created = await asyncio.to_thread(
            subprocess.run,
            [*agentbus, "keys", "create", "--tenant", "acme", "--nats"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert created.returncode == 0, created.stderr
        seed = next(w for w in created.stdout.split() if w.startswith("SU"))
        me = await tenant_session(url, seed, "acme")
        try:
            assert await me.stored(subjects.conversation_command("acme", "c1"), headers={Header.TENANT.value: "acme"})
        finally:
            await me.nc.close()
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 15)


def test_compose_gives_each_process_its_own_seed_and_publishes_no_nats_port() -> None:
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parent.parent / "compose.yaml").read_text())
    services = compose["services"]
    nats_service = services["nats"]
    assert "ports" not in nats_service
    assert nats_service["command"][:2] == ["agentbus", "nats-server"]  # what the test above runs
    for role in PROCESS_ROLES:
        service = services[role.value]
        assert service["secrets"] == [{"source": f"nats_{role.value}", "target": "nats"}]
        assert service["environment"]["NATS_NKEY_SEED_FILE"] == "/run/secrets/nats"
        assert compose["secrets"][f"nats_{role.value}"]["file"] == f"./.agentbus/credentials/{role.value}.nk"
