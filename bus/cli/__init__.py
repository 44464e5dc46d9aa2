"""The `agentbus` command: run everything, make API keys, list models and breakers, run an actor or the gateway;
chat, status, tasks, runs, research and dlq talk to a gateway (bus/cli/client.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import httpx
import msgspec

from bus import audit, keys, nats_users, subjects, tenants
from bus.cli import client as cli_client
from bus.cli.nats_setup import make_credentials, serve_nats, tenant_user_text
from bus.client import Bus
from bus.config import BusConfig
from bus.credentials import Role, is_nats_user, seed_path
from bus.errors import BusError
from bus.logging import configure_logging
from bus.model_status import model_report
from bus.secrets import ensure_secret_key
from bus.supervisor import ACTORS, CREDENTIALS, RunConfig, Running, Supervisor, say
from bus.tenants import TenantDefaults
from schemas.audit import AuditAction, AuditEvent
from schemas.tenants import TenantSettings

__all__ = ["curl_examples", "duration", "main"]

DOCS_PATHS = ("/schema/swagger", "/schema", "/docs")  # Litestar's OpenAPI UI first


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentbus", description="AI agents as actor processes on NATS JetStream.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run",
        help="start NATS and PostgreSQL (embedded unless NATS_URL / DATABASE_URL are set), every actor and the gateway",
    )
    key_commands = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    create = key_commands.add_parser("create", help="create an API key for a tenant and print it (shown once)")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument("--name", default="default", help="a label for the key (default: %(default)s)")
    create.add_argument(
        "--scope",
        action="append",
        choices=[s.value for s in keys.Scope],
        help="read, write or admin (admin implies write implies read; repeatable; default: admin)",
    )
    create.add_argument(
        "--nats", action="store_true", help="a NATS user for publishing to the bus directly, not an API key"
    )
    create.add_argument("--expires", type=duration, help="expire after this long: 90s, 15m, 12h, 30d (default: never)")
    listing = key_commands.add_parser("list", help="list keys: id, tenant, name, scopes, created, expires")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = key_commands.add_parser(
        "revoke", help="revoke a key by its id (or a NATS user by its public key): refused within a second"
    )
    revoke.add_argument("key_id")
    rotate = key_commands.add_parser("rotate", help="a new key in place of one (same tenant, name, scopes); print it")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", type=duration, default=0.0, help="keep the old key working this long (e.g. 1h)")
    tenant_commands = commands.add_parser(
        "tenants", help="a tenant's settings: rate limit, quotas, budgets, agents (bus/tenants.py)"
    ).add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    show = tenant_commands.add_parser("show", help="print a tenant's settings and what is in effect with the defaults")
    show.add_argument("tenant")
    set_ = tenant_commands.add_parser(
        "set", help="replace a tenant's settings with a JSON object; every replica sees it"
    )
    set_.add_argument("tenant")
    set_.add_argument("settings", help='e.g. \'{"quotas": {"tasks": 50}, "budgets": {"usd_per_day": 5}}\'')
    credentials = commands.add_parser("credentials", help="make the NATS nkey seed of every process role")
    credentials.add_argument("--dir", type=Path, help="where (default: .agentbus/credentials)")
    serve = commands.add_parser("nats-server", help="run nats-server with agentbus's users (compose.yaml's nats)")
    serve.add_argument("--data", type=Path, default=Path("/data"), help="JetStream data (default: %(default)s)")
    serve.add_argument("--credentials", type=Path, required=True, help="the directory of role seeds")
    serve.add_argument("--host", default="0.0.0.0", help="client address (default: %(default)s)")
    serve.add_argument("--port", type=int, default=4222, help="client port (default: %(default)s)")
    actor = commands.add_parser("actor", help="run one actor process (python -m actors.NAME)")
    actor.add_argument("name", choices=ACTORS)
    commands.add_parser("gateway", help="run the HTTP gateway process (python -m gateway)")
    commands.add_parser("asyncapi", help="print the bus's AsyncAPI 3 document (what docs/asyncapi.json holds)")
    models = commands.add_parser("models", help="each agent's models and their circuit breakers")
    models.add_argument("action", nargs="?", choices=["check"], help="check: send each model one tiny request")
    cli_client.add_parsers(commands)  # chat, status, tasks, runs, research, dlq: over HTTP (bus/cli/client.py)
    return parser


def _running_url(variable: str, file_name: str) -> str | None:
    """`variable` from the environment, else what a running `agentbus run` wrote to .agentbus/."""
    if value := os.environ.get(variable):
        return value
    path = RunConfig.from_env().home / file_name
    return path.read_text().strip() if path.exists() else None


def _admin_seed() -> str | None:
    """The admin role's nkey seed file a running `agentbus run` made here (None if there is none)."""
    path = seed_path(RunConfig.from_env().home / CREDENTIALS, Role.ADMIN)
    return str(path) if path.exists() else None


async def _connect(nats_url: str, name: str) -> Bus:
    config = BusConfig.from_env({**os.environ, "NATS_URL": nats_url}, name=name)
    if config.nkey_seed_file is None and config.credentials_dir is None:
        config = replace(config, nkey_seed_file=_admin_seed())
    try:
        return await asyncio.wait_for(Bus.connect(config), timeout=10.0)
    except TimeoutError:
        raise SystemExit(f"no NATS answers at {nats_url}") from None


def duration(text: str) -> float:
    """Seconds in `90s`, `15m`, `12h`, `30d` (or a bare number of seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 90s, 15m, 12h or 30d)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"a duration is not negative: {text!r}")
    return seconds


async def _keys(args: argparse.Namespace) -> str:
    """What `agentbus keys ...` prints; every change goes to the tenant's audit log as done by `cli`."""
    nats_url = _running_url("NATS_URL", "nats.url")
    if nats_url is None:
        raise SystemExit("set NATS_URL, or start `agentbus run` (make run) in this directory first")
    bus = await _connect(nats_url, "agentbus-keys")
    try:
        match args.keys_command:
            case "create" if args.nats:
                user_text = await tenant_user_text(bus, args.tenant, args.name)
                await _audited_nats(bus, args.tenant, AuditAction.CREATED, user_text.split()[2])
                return user_text
            case "create":
                expires_at = None if args.expires is None else time.time() + args.expires
                scopes = [keys.Scope(s) for s in args.scope or ["admin"]]
                key, stored = await keys.create(
                    bus, tenant=args.tenant, name=args.name, scopes=scopes, expires_at=expires_at
                )
                await _audited(bus, stored, AuditAction.CREATED)
                return key
            case "list":
                users = await nats_users.list_users(bus, tenant=args.tenant)
                listed = _table(await keys.list_keys(bus, args.tenant))
                if users:
                    listed += "\n\nNATS users (revoke by public key):\n" + "\n".join(
                        f"{u.public_key}  {u.tenant}  {u.name}" for u in users
                    )
                return listed
            case "revoke" if is_nats_user(args.key_id):
                revoked = [u for u in await nats_users.list_users(bus) if u.public_key == args.key_id]
                if not revoked or not await nats_users.revoke_user(bus, args.key_id):
                    raise SystemExit(f"no NATS user {args.key_id}")
                await _audited_nats(bus, revoked[0].tenant, AuditAction.REVOKED, args.key_id)
                return f"revoked NATS user {args.key_id} ({revoked[0].tenant}); its connections are closed"
            case "revoke":
                gone = await keys.revoke_id(bus, args.key_id)
                if gone is None:
                    raise SystemExit(f"no key {args.key_id}")
                await _audited(bus, gone, AuditAction.REVOKED)
                return f"revoked {gone.id} ({gone.record.tenant}/{gone.record.name})"
            case "rotate":
                old = await keys.find(bus, args.key_id)
                if old is None:
                    raise SystemExit(f"no key {args.key_id}")
                key, new = await keys.rotate(bus, old, grace_s=args.grace)
                await _audited(bus, old, AuditAction.ROTATED, target=new.id)
                return key
        raise SystemExit(f"unknown keys command {args.keys_command}")
    finally:
        await bus.close()


async def _tenants(args: argparse.Namespace) -> str:
    """What `agentbus tenants show|set` prints: the stored settings, then those in effect."""
    subjects.token(args.tenant)
    if args.tenants_command == "set":
        try:
            settings = msgspec.json.decode(args.settings, type=TenantSettings)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise SystemExit(f"not tenant settings: {e}") from None
    nats_url = _running_url("NATS_URL", "nats.url")
    if nats_url is None:
        raise SystemExit("set NATS_URL, or start `agentbus run` (make run) in this directory first")
    bus = await _connect(nats_url, "agentbus-tenants")
    try:
        if args.tenants_command == "set":
            await tenants.write(bus, args.tenant, settings)
        stored = await tenants.read(bus, args.tenant)
    finally:
        await bus.close()
    effective = TenantDefaults.from_env().resolve(stored)
    return "\n".join(
        [
            f"stored:    {msgspec.json.encode(stored).decode()}",
            f"in effect: {msgspec.json.encode(effective).decode()}",
        ]
    )


async def _audited(bus: Bus, stored: keys.StoredKey, action: AuditAction, *, target: str = "") -> None:
    event = AuditEvent(
        at=time.time(), tenant=stored.record.tenant, key_id="cli", action=action, target=target or stored.id
    )
    await audit.record(bus, event)


async def _audited_nats(bus: Bus, tenant: str, action: AuditAction, public_key: str) -> None:
    await audit.record(bus, AuditEvent(at=time.time(), tenant=tenant, key_id="cli", action=action, target=public_key))


def _table(found: list[keys.StoredKey]) -> str:
    def when(at: float | None) -> str:
        return "never" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    rows = [("ID", "TENANT", "NAME", "SCOPES", "CREATED", "EXPIRES")]
    rows += [
        (
            s.id,
            s.record.tenant,
            s.record.name,
            ",".join(s.record.scopes),
            when(s.record.created_at),
            when(s.record.expires_at),
        )
        for s in found
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


async def _models(check: bool) -> str:
    nats_url = _running_url("NATS_URL", "nats.url")
    if nats_url is None:
        raise SystemExit("set NATS_URL, or start `agentbus run` (make run) in this directory first")
    bus = await _connect(nats_url, "agentbus-models")
    try:
        return await model_report(bus, check=check)
    except BusError as e:
        raise SystemExit(f"the executor did not answer: {e.message}") from None
    finally:
        await bus.close()


async def _dev_key(running: Running) -> str:
    """The development API key: made once, kept in .agentbus/dev-api-key (mode 600)."""
    path = running.config.home / "dev-api-key"
    bus = await _connect(running.nats_url, "agentbus-run")
    try:
        if path.exists():
            saved = path.read_text().strip()
            if await keys.lookup(bus, saved) is not None:
                return saved
            say("the saved development key is unknown to this NATS: making a new one")
        key = await keys.create_key(bus, tenant="dev", name="dev")
    finally:
        await bus.close()
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


async def _docs_url(gateway_url: str) -> str:
    async with httpx.AsyncClient(timeout=2.0) as http:
        for path in DOCS_PATHS:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(gateway_url + path)).status_code == 200:
                    return gateway_url + path
    return gateway_url + DOCS_PATHS[0]


def curl_examples(gateway_url: str, key: str) -> list[str]:
    """Ready-to-paste shell lines for a first chat turn against a running gateway."""
    h = f'-H "Authorization: Bearer {key}" -H "Content-Type: application/json"'
    return [
        "# create a conversation, keep its id",
        f"CONV=$(curl -s {h} -d '{{}}' {gateway_url}/v1/conversations"
        " | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id\"])')",
        "# one chat turn: the reply as JSON",
        f'curl -s {h} -d \'{{"message": "Hello!"}}\' {gateway_url}/v1/conversations/$CONV/messages',
        "# the same, streamed token by token (server-sent events)",
        f'curl -N {h} -d \'{{"message": "Tell me more", "stream": true}}\' '
        f"{gateway_url}/v1/conversations/$CONV/messages",
    ]


async def _welcome(running: Running) -> None:
    key = await _dev_key(running)
    docs = await _docs_url(running.gateway_url)
    cfg = running.config
    taken = f"   (port {cfg.port} is taken; AGENTBUS_PORT chooses)" if running.gateway_port != cfg.port else ""
    lines = [
        "",
        "agentbus is running",
        f"  gateway   {running.gateway_url}{taken}",
        f"  API docs  {docs}",
        f"  console   {running.gateway_url}/console/   (sign in with the API key below)",
        f"  NATS      {running.nats_url}",
        f"  API key   {key}   (tenant 'dev', saved in {cfg.home / 'dev-api-key'})",
        "",
        *(f"  {line}" for line in curl_examples(running.gateway_url, key)),
        "",
        f"Ctrl-C stops everything; the data stays in {cfg.home}",
        "",
    ]
    print("\n".join(lines), flush=True)  # unprefixed, so the curl lines paste as they are


def _exec_module(module: str, role: str) -> NoReturn:
    """Become `python -m module`, pointed at a running `agentbus run` when no URLs are set."""
    env = dict(os.environ)
    ensure_secret_key(RunConfig.from_env().home, env)  # the running platform's key
    for variable, file_name in (("NATS_URL", "nats.url"), ("DATABASE_URL", "database.url")):
        value = _running_url(variable, file_name)
        if value is not None:
            env[variable] = value
        else:
            print(f"agentbus: {variable} is not set and no `agentbus run` is running here", file=sys.stderr)
    seed = seed_path(RunConfig.from_env().home / CREDENTIALS, Role(role))
    if "NATS_NKEY_SEED_FILE" not in env and "AGENTBUS_NATS_CREDENTIALS" not in env and seed.exists():
        env["NATS_NKEY_SEED_FILE"] = str(seed)
    os.execve(sys.executable, [sys.executable, "-m", module], env)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in cli_client.COMMANDS:  # HTTP only: no bus client here, whose logging to configure
        return cli_client.run(args)
    if args.command == "asyncapi":  # no bus client either: the logging stays as the caller has it
        from bus.asyncapi import render  # builds every schema: only for this command

        print(render(), end="")
        return 0
    configure_logging("agentbus", console=True, level="ERROR")  # the bus client's own chatter is not for this screen
    match args.command:
        case "run":
            config = RunConfig.from_env()
            ensure_secret_key(config.home)  # the key secrets are sealed with, for every child (bus/secrets.py)
            return asyncio.run(Supervisor(config, on_ready=_welcome).run())
        case "keys":
            print(asyncio.run(_keys(args)))
            return 0
        case "tenants":
            print(asyncio.run(_tenants(args)))
            return 0
        case "credentials":
            print(make_credentials(args.dir or RunConfig.from_env().home / CREDENTIALS))
            return 0
        case "nats-server":
            asyncio.run(serve_nats(args.data, args.credentials, args.host, args.port))
            return 0
        case "actor":
            _exec_module(f"actors.{args.name}", args.name)
        case "gateway":
            _exec_module("gateway", Role.GATEWAY.value)
        case "models":
            print(asyncio.run(_models(args.action == "check")))
            return 0
    return 2
