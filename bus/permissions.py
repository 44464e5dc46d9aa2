"""What each process may do on the bus: one `Access` per role, compiled into nats-server permissions.

Every subject here comes from `bus/subjects.py` and every stream from `bus/streams.py`, so the
permissions follow the layout instead of a hand-kept list. A role may:

- publish the commands, events and requests named in its `Access`, and its own dead letters;
- read (consume, direct-get, ack) only the streams it names, and touch only the KV buckets it names;
- create the platform's streams (so processes may start in any order) but never update, delete or
  purge one, nor delete a stored message: that is the `admin` role's (`agentbus run`, the CLI), with one
  exception: the gateway deletes single dead letters from `AB_DLQ` (`$JS.API.STREAM.MSG.DELETE.AB_DLQ`,
  its `deletes_from`), which is what replaying or discarding one through /v1/dead-letters does;
- receive replies only on its own inbox prefix (`_INBOX.<role>.`), so no process reads another's.

A tenant's own NATS user (`agentbus keys create --nats`) may publish only that tenant's command
subjects and read only that tenant's run output and events (see `tenant_permissions`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bus import breakers, keys, nats_users, streams, subjects, tenants
from bus.credentials import Role
from bus.streams import (
    ALL_STREAMS,
    CONVERSATION_CMD,
    CONVERSATION_EVT,
    EXECUTOR_EVT,
    NOTIFIER_EVT,
    RESEARCH_EVT,
    RUN_OUT,
    SCHEDULER_EVT,
    StreamSpec,
)
from bus.subjects import ActorName, RunOrigin

__all__ = ["ACCESS", "Access", "Permissions", "permissions", "server_authorization", "tenant_permissions"]

A = ActorName
EVENT_STREAMS = (CONVERSATION_EVT, EXECUTOR_EVT, SCHEDULER_EVT, RESEARCH_EVT, NOTIFIER_EVT)
# tenants' own NATS users may publish commands to these actors (the documented direct use)
TENANT_COMMAND_ACTORS = (A.CONVERSATION, A.SCHEDULER, A.RESEARCH)


@dataclass(frozen=True, slots=True)
class Access:
    """What one process role does on the bus, in the bus's own terms."""

    sends: tuple[str, ...] = ()  # subjects (patterns) it publishes: commands, events, run output, cancels
    listens: tuple[str, ...] = ()  # core NATS subscriptions beyond its own services and inbox
    asks: tuple[ActorName, ...] = ()  # actors whose services it requests
    reads: tuple[StreamSpec, ...] = ()  # streams it consumes or reads messages from
    buckets: tuple[str, ...] = ()  # KV buckets it reads and writes
    reads_buckets: tuple[str, ...] = ()  # KV buckets it only reads
    serves: bool = True  # it answers its own service endpoints (ab.<role>.svc.>)
    deletes_from: tuple[StreamSpec, ...] = ()  # streams whose stored messages it may delete one at a time


ACCESS: dict[Role, Access] = {
    Role.CONVERSATION: Access(
        sends=(subjects.conversation_events_all(), subjects.executor_plain_commands(), subjects.run_outputs()),
        asks=(A.EXECUTOR,),
        reads=(CONVERSATION_CMD, EXECUTOR_EVT, RUN_OUT),
        reads_buckets=(tenants.BUCKET,),
    ),
    Role.EXECUTOR: Access(
        sends=(
            subjects.run_outputs(),
            subjects.executor_events(),
            subjects.executor_plain_commands(),
            subjects.executor_origin_commands(RunOrigin.SUBRUN),  # pipeline steps and subagent hand-offs
            subjects.executor_origin_commands(RunOrigin.RESUME),  # a parked run's calls are all decided
            subjects.executor_cancels(),
            subjects.executor_steers(),
        ),
        listens=(subjects.executor_cancels(), subjects.executor_steers()),
        asks=(A.EXECUTOR, A.CONVERSATION, A.RESEARCH, A.TRIGGER),  # the trigger: a run's event waits
        reads=(streams.EXECUTOR_CMD, EXECUTOR_EVT, RUN_OUT),
        buckets=(breakers.BUCKET,),
        reads_buckets=(tenants.BUCKET,),
    ),
    Role.SCHEDULER: Access(
        sends=(
            subjects.scheduler_events(),
            subjects.conversation_commands(),
            subjects.executor_plain_commands(),
            subjects.notifier_commands(),
            subjects.notifier_events(),
        ),
        asks=(A.CONVERSATION, A.EXECUTOR, A.TRIGGER, A.NOTIFIER),
        reads=(streams.SCHEDULER_CMD, EXECUTOR_EVT, RUN_OUT),
        reads_buckets=(tenants.BUCKET,),
    ),
    Role.TRIGGER: Access(
        # tasks to fire, and the answers to runs' event waits
        sends=(subjects.scheduler_commands(), subjects.executor_origin_commands(RunOrigin.RESOLVE)),
        asks=(A.SCHEDULER,),
        reads=(*EVENT_STREAMS, RUN_OUT),  # an event-triggered task may follow any event subject
        reads_buckets=(tenants.BUCKET,),
    ),
    Role.RESEARCH: Access(
        sends=(
            subjects.research_events(),
            subjects.research_commands(),  # a job's next step is a command to itself
            subjects.research_cancels(),  # a cancel command reaches the replica driving the job
            subjects.executor_origin_commands(RunOrigin.RESEARCH),  # a job's sub-runs, alone allowed internal agents
            subjects.executor_cancels(),
            subjects.notifier_commands(),
            subjects.notifier_events(),
        ),
        listens=(subjects.research_cancels(),),
        asks=(A.EXECUTOR, A.NOTIFIER),
        reads=(streams.RESEARCH_CMD, EXECUTOR_EVT, RUN_OUT),
        reads_buckets=(tenants.BUCKET,),
    ),
    Role.NOTIFIER: Access(
        sends=(subjects.notifier_events(), subjects.notifier_commands()),  # a retry is a command again
        reads=(streams.NOTIFIER_CMD,),
        reads_buckets=(tenants.BUCKET,),
    ),
    Role.GATEWAY: Access(
        sends=(
            subjects.conversation_commands(),
            subjects.scheduler_commands(),
            subjects.research_commands(),
            subjects.executor_plain_commands(),
            subjects.executor_cancels(),
            subjects.research_cancels(),
            subjects.audit_all(),
            subjects.MICRO_DISCOVERY,  # GET /v1/status finds every replica (PING)
        ),
        listens=(subjects.conversation_turns_all(), subjects.executor_waiting_all()),  # a turn's end, or its park
        asks=tuple(ActorName),
        reads=(CONVERSATION_CMD, *EVENT_STREAMS, streams.EVENTS, RUN_OUT, streams.AUDIT, streams.DLQ),
        buckets=(keys.BUCKET, streams.IDEMPOTENCY_BUCKET, streams.WS_TOKENS_BUCKET, streams.RATE_LIMITS_BUCKET),
        reads_buckets=(breakers.BUCKET, tenants.BUCKET),
        serves=False,
        deletes_from=(streams.DLQ,),  # a dead letter replayed or discarded (gateway/dead_letters.py)
    ),
}


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    responses: bool = False  # may answer the requests it receives (nats-server `allow_responses`)

    def server_config(self) -> dict[str, object]:
        publish: dict[str, object] = {"allow": sorted(set(self.publish))}
        if self.deny_publish:
            publish["deny"] = sorted(set(self.deny_publish))
        out: dict[str, object] = {"publish": publish, "subscribe": {"allow": sorted(set(self.subscribe))}}
        if self.responses:
            out["allow_responses"] = True
        return out


# never granted to a process role: what would lose stored data (but the single-message deletes a role's
# `deletes_from` names: nats-server lets a deny win over any allow, so that role's deny leaves them out)
MESSAGE_DELETE = subjects.js_api("STREAM", "MSG", "DELETE", "*")
DESTRUCTIVE = (
    subjects.js_stream_api("DELETE", "*"),
    subjects.js_stream_api("PURGE", "*"),
    MESSAGE_DELETE,
    subjects.js_stream_api("UPDATE", "*"),
)


def _stream_reads(specs: Iterable[StreamSpec]) -> list[str]:
    return [s for spec in specs for s in subjects.js_stream_reads(spec.name)]


def _bucket_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def permissions(role: Role) -> Permissions:
    """The nats-server permissions of one process role."""
    if role is Role.ADMIN:
        return Permissions(publish=(">",), subscribe=(">",), responses=True)
    access = ACCESS[role]
    own = ActorName(role.value)
    buckets = (*access.buckets, *access.reads_buckets)
    publish = [
        *access.sends,
        *(subjects.services(actor) for actor in access.asks),
        subjects.dead_letter(own),
        f"{subjects.inbox_prefix(role.value)}.>",  # Bus.barrier's round trip to itself
        subjects.js_api("INFO"),
        subjects.js_stream_api("INFO", "*"),
        subjects.js_api("STREAM", "NAMES"),
        subjects.js_api("STREAM", "LIST"),  # stream configs and counts, never their messages
        subjects.js_api("CONSUMER", "LIST", "*"),  # consumer configs and counts, likewise
        subjects.js_api("CONSUMER", "NAMES", "*"),
        *(subjects.js_stream_api("CREATE", spec.name) for spec in ALL_STREAMS),
        *(subjects.js_stream_api("CREATE", _bucket_stream(b)) for b in buckets),
        *_stream_reads(access.reads),
        *(s for b in buckets for s in subjects.js_stream_reads(_bucket_stream(b))),
        *(subjects.kv_writes(b) for b in access.buckets),
        *(subjects.js_stream_api("MSG.DELETE", spec.name) for spec in access.deletes_from),
    ]
    subscribe = [f"{subjects.inbox_prefix(role.value)}.>", *access.listens]
    if access.serves:
        subscribe += [subjects.services(own), subjects.MICRO_DISCOVERY]
    deny = tuple(d for d in DESTRUCTIVE if not (access.deletes_from and d == MESSAGE_DELETE))
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe), deny_publish=deny, responses=True)


def tenant_permissions(tenant: str) -> Permissions:
    """A tenant's own NATS user: its commands in, its run output and events out, nothing else."""
    return Permissions(
        publish=tuple(subjects.tenant_commands(actor, tenant) for actor in TENANT_COMMAND_ACTORS),
        subscribe=(
            subjects.tenant_run_outputs(tenant),
            subjects.tenant_events(tenant),
            f"{subjects.tenant_inbox_prefix(tenant)}.>",
        ),
    )


def server_authorization(roles: dict[Role, str], tenant_users: Sequence[nats_users.NatsUser] = ()) -> str:
    """The `authorization { users: [...] }` block of nats-server's config: one nkey user per role and
    per tenant NATS user. JSON is valid nats-server config syntax, so the values are JSON-quoted."""
    users = [
        {"nkey": public_key, "permissions": permissions(role).server_config()} for role, public_key in roles.items()
    ]
    users += [
        {"nkey": user.public_key, "permissions": tenant_permissions(user.tenant).server_config()}
        for user in tenant_users
        if not user.revoked
    ]
    return "authorization " + json.dumps({"users": users}, indent=1) + "\n"
