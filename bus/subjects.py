"""Every subject name on the bus, built here and nowhere else.

Layout (see docs/bus.md):
  ab.<actor>.cmd.<tenant>.<id>             commands, JetStream work queues, durable consumers
  ab.<actor>.evt.<tenant>.<id>.<kind>      events, JetStream, fan-out and replayable
  ab.<actor>.svc.<verb>                    queries, NATS micro service request/reply
  ab.run.out.<tenant>.<run_id>             one run's output, ordered and resumable
  ab.executor.cmd.<tenant>.<run_id>.<origin> a run started by the platform itself (a pipeline step or
                                           hand-off: `sub`; a research job's sub-run: `research`)
  ab.executor.ctl.cancel.<tenant>.<run_id> cancel broadcast to every executor replica (core NATS)
  ab.research.ctl.cancel.<tenant>.<job_id> cancel broadcast to every research replica (core NATS)
  ab.dlq.<actor>                           dead letters, with the reason in headers
  ab.audit.<tenant>.<action>               the audit log: who (key id) did what, when (JetStream)

NATS's own subjects that the per-process permissions name (JetStream API, KV, acks, inboxes, the micro
service discovery subjects) are built here too, in the section before the parse helpers, which read
subjects (and subscription patterns) in the layout above.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "MICRO_DISCOVERY",
    "ActorName",
    "EventSubject",
    "InvalidToken",
    "RunOrigin",
    "audit",
    "audit_all",
    "audit_of",
    "command_tenant",
    "consumer_next",
    "conversation_command",
    "conversation_commands",
    "conversation_event",
    "conversation_events",
    "conversation_events_all",
    "conversation_turns_all",
    "dead_letter",
    "dead_letters",
    "executor_cancel",
    "executor_cancels",
    "executor_command",
    "executor_commands",
    "executor_events",
    "executor_finished",
    "executor_finished_all",
    "executor_origin_commands",
    "executor_plain_commands",
    "executor_steer",
    "executor_steers",
    "executor_subrun_command",
    "executor_waiting",
    "executor_waiting_all",
    "inbox_prefix",
    "instance_health",
    "js_api",
    "js_consumer_api",
    "js_stream_api",
    "js_stream_reads",
    "kv_writes",
    "micro_ping",
    "notifier_command",
    "notifier_commands",
    "notifier_event",
    "notifier_events",
    "notifier_in_app",
    "parse_event",
    "pattern_error",
    "pattern_matches",
    "pattern_tenant",
    "research_cancel",
    "research_cancels",
    "research_command",
    "research_commands",
    "research_event",
    "research_events",
    "research_job_events",
    "run_origin",
    "run_output",
    "run_outputs",
    "scheduler_changes_all",
    "scheduler_command",
    "scheduler_commands",
    "scheduler_event",
    "scheduler_events",
    "service",
    "services",
    "tenant_commands",
    "tenant_event_kinds",
    "tenant_events",
    "tenant_inbox_prefix",
    "tenant_run_outputs",
    "token",
]

PREFIX = "ab"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class InvalidToken(ValueError):
    """A tenant or id cannot be used inside a subject."""


class ActorName(enum.StrEnum):
    CONVERSATION = "conversation"
    EXECUTOR = "executor"
    SCHEDULER = "scheduler"
    TRIGGER = "trigger"
    RESEARCH = "research"
    NOTIFIER = "notifier"
    GATEWAY = "gateway"


class RunOrigin(enum.StrEnum):
    """Who started a run the platform publishes for itself (the last token of its command subject).

    A plain `ab.executor.cmd.<tenant>.<run_id>` is a run asked for on the tenant's behalf (a turn, a task,
    a pipeline run, a tenant's own publish) and runs only the agents the tenant may run; only the executor
    may publish `sub` (the steps and hand-offs of a run it checked) and only the research actor `research`
    (a job's sub-runs, which may run the internal research agents). Two more name no new run but an existing
    one's next step (schemas/approvals.py): `resume` (the executor continuing a parked run, once every call it
    waited on is decided) and `resolve` (the trigger actor's answer to a `wait_for_event` call)."""

    SUBRUN = "sub"
    RESEARCH = "research"
    RESUME = "resume"
    RESOLVE = "resolve"


def token(value: str) -> str:
    """Return `value` if it is safe as one subject token (no dots, spaces or wildcards)."""
    if not _TOKEN.match(value):
        raise InvalidToken(f"not a valid subject token: {value!r}")
    return value


def _join(*parts: str) -> str:
    return ".".join((PREFIX, *parts))


# --- conversation ------------------------------------------------------------------------------


def conversation_command(tenant: str, conversation_id: str) -> str:
    return _join("conversation", "cmd", token(tenant), token(conversation_id))


def conversation_commands() -> str:
    return _join("conversation", "cmd", ">")


def conversation_event(tenant: str, conversation_id: str, kind: str) -> str:
    return _join("conversation", "evt", token(tenant), token(conversation_id), token(kind))


def conversation_events(tenant: str, conversation_id: str) -> str:
    """Every event of one conversation (a subscription pattern)."""
    return _join("conversation", "evt", token(tenant), token(conversation_id), "*")


def conversation_events_all() -> str:
    return _join("conversation", "evt", ">")


def conversation_turns_all() -> str:
    """Every conversation's turn events (what a gateway waits on)."""
    return _join("conversation", "evt", "*", "*", "turn")


# --- executor ----------------------------------------------------------------------------------


def executor_command(tenant: str, run_id: str) -> str:
    return _join("executor", "cmd", token(tenant), token(run_id))


def executor_commands() -> str:
    return _join("executor", "cmd", ">")


def executor_subrun_command(tenant: str, run_id: str, origin: RunOrigin) -> str:
    """A run started by the platform itself; the executor's command consumer takes it with the rest."""
    return _join("executor", "cmd", token(tenant), token(run_id), origin.value)


def executor_plain_commands() -> str:
    """Every tenant's runs asked for on its behalf (a permission pattern: who may publish them)."""
    return _join("executor", "cmd", "*", "*")


def executor_origin_commands(origin: RunOrigin) -> str:
    """Every tenant's runs of that origin (a permission pattern: who may publish them)."""
    return _join("executor", "cmd", "*", "*", origin.value)


def executor_cancel(tenant: str, run_id: str) -> str:
    return _join("executor", "ctl", "cancel", token(tenant), token(run_id))


def executor_cancels() -> str:
    return _join("executor", "ctl", "cancel", "*", "*")


def executor_finished(tenant: str, run_id: str) -> str:
    return _join("executor", "evt", token(tenant), token(run_id), "finished")


def executor_finished_all() -> str:
    return _join("executor", "evt", "*", "*", "finished")


def executor_waiting(tenant: str, run_id: str) -> str:
    """The run parked (RunWaiting): what a task's or research job's notifications of a waiting approval follow."""
    return _join("executor", "evt", token(tenant), token(run_id), "waiting")


def executor_waiting_all() -> str:
    return _join("executor", "evt", "*", "*", "waiting")


def executor_steer(tenant: str, run_id: str) -> str:
    """A steering message broadcast to every executor replica (core NATS): the one running the run takes it."""
    return _join("executor", "ctl", "steer", token(tenant), token(run_id))


def executor_steers() -> str:
    return _join("executor", "ctl", "steer", "*", "*")


def executor_events() -> str:
    return _join("executor", "evt", ">")


# --- scheduler and trigger --------------------------------------------------------------------


def scheduler_command(tenant: str, task_id: str) -> str:
    return _join("scheduler", "cmd", token(tenant), token(task_id))


def scheduler_commands() -> str:
    return _join("scheduler", "cmd", ">")


def scheduler_event(tenant: str, task_id: str, kind: str) -> str:
    return _join("scheduler", "evt", token(tenant), token(task_id), token(kind))


def scheduler_changes_all() -> str:
    """Every task's `changed` event (what the trigger actor follows)."""
    return _join("scheduler", "evt", "*", "*", "changed")


def scheduler_events() -> str:
    return _join("scheduler", "evt", ">")


# --- research ----------------------------------------------------------------------------------


def research_command(tenant: str, job_id: str) -> str:
    return _join("research", "cmd", token(tenant), token(job_id))


def research_commands() -> str:
    return _join("research", "cmd", ">")


def research_event(tenant: str, job_id: str, kind: str) -> str:
    return _join("research", "evt", token(tenant), token(job_id), token(kind))


def research_job_events(tenant: str, job_id: str) -> str:
    """Every progress event of one research job (what its SSE stream replays)."""
    return _join("research", "evt", token(tenant), token(job_id), "*")


def research_events() -> str:
    return _join("research", "evt", ">")


def research_cancel(tenant: str, job_id: str) -> str:
    return _join("research", "ctl", "cancel", token(tenant), token(job_id))


def research_cancels() -> str:
    return _join("research", "ctl", "cancel", "*", "*")


# --- notifier ----------------------------------------------------------------------------------


def notifier_command(tenant: str, delivery_id: str) -> str:
    return _join("notifier", "cmd", token(tenant), token(delivery_id))


def notifier_commands() -> str:
    return _join("notifier", "cmd", ">")


def notifier_event(tenant: str, delivery_id: str, kind: str) -> str:
    return _join("notifier", "evt", token(tenant), token(delivery_id), token(kind))


def notifier_in_app(tenant: str) -> str:
    """Every in-app notification of one tenant (what its SSE stream and list replay)."""
    return _join("notifier", "evt", token(tenant), "*", "in_app")


def notifier_events() -> str:
    return _join("notifier", "evt", ">")


# --- run output --------------------------------------------------------------------------------


def run_output(tenant: str, run_id: str) -> str:
    return _join("run", "out", token(tenant), token(run_id))


def tenant_run_outputs(tenant: str) -> str:
    """Every run output of one tenant (a subscription pattern)."""
    return _join("run", "out", token(tenant), "*")


def run_outputs() -> str:
    return _join("run", "out", ">")


# --- audit log ---------------------------------------------------------------------------------


def audit(tenant: str, action: str) -> str:
    return _join("audit", token(tenant), token(action))


def audit_of(tenant: str) -> str:
    return _join("audit", token(tenant), "*")


def audit_all() -> str:
    return _join("audit", ">")


# --- services and dead letters -----------------------------------------------------------------


def service(actor: ActorName, verb: str) -> str:
    return _join(actor.value, "svc", token(verb))


def instance_health(actor: ActorName, instance_id: str) -> str:
    """One replica's own health endpoint (`instance_id`: its micro service id, as PING answers it), beside the
    shared `health` that any one replica answers."""
    return _join(actor.value, "svc", "health", token(instance_id))


def micro_ping(service_name: str) -> str:
    """What every replica of a NATS micro service answers (its id, name, version, metadata)."""
    return f"$SRV.PING.{token(service_name)}"


def services(actor: ActorName) -> str:
    """Every service endpoint of `actor` (a subscription pattern)."""
    return _join(actor.value, "svc", ">")


def tenant_commands(actor: ActorName, tenant: str) -> str:
    """Every command of one tenant to `actor` (what a tenant's own NATS user may publish)."""
    return _join(actor.value, "cmd", token(tenant), ">")


def tenant_events(tenant: str) -> str:
    """Every event of one tenant, whatever the actor (what a tenant's own NATS user may read)."""
    return _join("*", "evt", token(tenant), ">")


def tenant_event_kinds(tenant: str, area: str = "*", kind: str = "*") -> str:
    """One tenant's events of `area` (an actor, or `*`) and `kind` (or `*`), whatever the entity: a filter of
    the tenant's event feed (`executor`, `finished`: every run's end)."""
    parts = (token(area) if area != "*" else "*", "evt", token(tenant), "*", token(kind) if kind != "*" else "*")
    return _join(*parts)


def consumer_next(stream: str, durable: str) -> str:
    """JetStream's API subject for pulling messages from a durable consumer (not under `ab.`)."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{token(stream)}.{token(durable)}"


def dead_letter(actor: ActorName) -> str:
    return _join("dlq", actor.value)


def dead_letters() -> str:
    return _join("dlq", ">")


# --- NATS's own subjects, as permissions name them --------------------------------------------


def inbox_prefix(role: str) -> str:
    """The reply inbox prefix of one process role: its replies are readable by it alone."""
    return f"_INBOX.{token(role)}"


def tenant_inbox_prefix(tenant: str) -> str:
    """The reply inbox prefix a tenant's own NATS user must connect with (`inbox_prefix=`)."""
    return f"_INBOX.tenant.{token(tenant)}"


def js_api(*tokens: str) -> str:
    """A JetStream API subject, e.g. js_api("INFO") or js_api("STREAM", "INFO", "*")."""
    return ".".join(("$JS", "API", *tokens))


def js_stream_api(verb: str, stream: str) -> str:
    """The JetStream API subject that applies `verb` (INFO, CREATE, UPDATE, DELETE, PURGE...) to `stream`."""
    return js_api("STREAM", verb, stream)


def js_consumer_api(stream: str) -> tuple[str, ...]:
    """Every consumer API subject on one stream: create, info, delete, list, and pulling messages."""
    return (
        js_api("CONSUMER", "*", stream),
        js_api("CONSUMER", "*", stream, ">"),
        js_api("CONSUMER", "DURABLE", "CREATE", stream, ">"),
        js_api("CONSUMER", "MSG", "NEXT", stream, ">"),
    )


def js_stream_reads(stream: str) -> tuple[str, ...]:
    """What reading one stream's messages publishes: direct and leader gets, acks, flow control."""
    return (
        js_api("DIRECT", "GET", stream),
        js_api("DIRECT", "GET", stream, ">"),
        js_stream_api("MSG.GET", stream),
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
        *js_consumer_api(stream),
    )


def kv_writes(bucket: str) -> str:
    """The subjects a put, delete or purge of any key in one KV bucket publishes to."""
    return f"$KV.{token(bucket)}.>"


MICRO_DISCOVERY = "$SRV.>"  # what nats.micro services answer (PING, INFO, STATS)


# --- parsing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventSubject:
    """An event subject taken apart: ab.<area>.evt.<tenant>.<entity_id>[.<kind>]."""

    area: str
    tenant: str
    entity_id: str
    kind: str  # the tokens after the entity id, joined by dots ("" if there are none)


def parse_event(subject: str) -> EventSubject | None:
    """The parts of an event subject; None for any other subject (or a pattern)."""
    tokens = subject.split(".")
    if len(tokens) < 5 or tokens[0] != PREFIX or tokens[2] != "evt" or any(t in ("*", ">") for t in tokens):
        return None
    return EventSubject(area=tokens[1], tenant=tokens[3], entity_id=tokens[4], kind=".".join(tokens[5:]))


def command_tenant(subject: str) -> str | None:
    """The tenant token of a command subject (ab.<actor>.cmd.<tenant>.<id>); None for any other subject."""
    tokens = subject.split(".")
    if len(tokens) < 5 or tokens[0] != PREFIX or tokens[2] != "cmd":
        return None
    return tokens[3]


def run_origin(subject: str) -> RunOrigin | None:
    """The origin an executor command subject names; None for a plain one (or any other subject)."""
    tokens = subject.split(".")
    if len(tokens) != 6 or tokens[:3] != [PREFIX, "executor", "cmd"]:
        return None
    try:
        return RunOrigin(tokens[5])
    except ValueError:
        return None


def pattern_error(pattern: str) -> str | None:
    """Why `pattern` is not a NATS subject (or subscription pattern); None if it is one."""
    tokens = pattern.split(".")
    for i, tok in enumerate(tokens):
        if not tok or any(c.isspace() for c in tok):
            return f"not a NATS subject pattern: {pattern!r}"
        if ("*" in tok or ">" in tok) and len(tok) > 1:
            return f"a wildcard must be a whole token: {pattern!r}"
        if tok == ">" and i != len(tokens) - 1:
            return f"`>` may only be the last token: {pattern!r}"
    return None


def pattern_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a final `>` is one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, tok in enumerate(want):
        if tok == ">":
            return len(got) > i
        if i >= len(got) or (tok != "*" and tok != got[i]):
            return False
    return len(got) == len(want)


def pattern_tenant(pattern: str) -> str | None:
    """The tenant whose events `pattern` is confined to: it is valid and starts with
    `ab.<area>.evt.<tenant>.` with a literal area and tenant (so one events stream holds all it
    matches). None for a pattern that is not such, e.g. one spanning tenants or areas."""
    if pattern_error(pattern) is not None:
        return None
    tokens = pattern.split(".")
    if len(tokens) < 5 or tokens[0] != PREFIX or tokens[2] != "evt":
        return None
    if any(t in ("*", ">") for t in tokens[1:4]):
        return None
    return tokens[3]
