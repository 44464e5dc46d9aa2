"""Every subject name on the bus, built here and nowhere else.

Layout (see docs/bus.md):
  ab.<actor>.cmd.<tenant>.<id>             commands, JetStream work queues, durable consumers
  ab.<actor>.evt.<tenant>.<id>.<kind>      events, JetStream, fan-out and replayable
  ab.<actor>.svc.<verb>                    queries, NATS micro service request/reply
  ab.run.out.<tenant>.<run_id>             one run's output, ordered and resumable
  ab.executor.ctl.cancel.<tenant>.<run_id> cancel broadcast to every executor replica (core NATS)
  ab.research.ctl.cancel.<tenant>.<job_id> cancel broadcast to every research replica (core NATS)
  ab.dlq.<actor>                           dead letters, with the reason in headers
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "ActorName",
    "InvalidToken",
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
    "notifier_command",
    "notifier_commands",
    "notifier_event",
    "notifier_events",
    "research_cancel",
    "research_cancels",
    "research_command",
    "research_commands",
    "research_event",
    "research_events",
    "research_job_events",
    "run_output",
    "run_outputs",
    "scheduler_changes_all",
    "scheduler_command",
    "scheduler_commands",
    "scheduler_event",
    "scheduler_events",
    "service",
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


def executor_cancel(tenant: str, run_id: str) -> str:
    return _join("executor", "ctl", "cancel", token(tenant), token(run_id))


def executor_cancels() -> str:
    return _join("executor", "ctl", "cancel", "*", "*")


def executor_finished(tenant: str, run_id: str) -> str:
    return _join("executor", "evt", token(tenant), token(run_id), "finished")


def executor_finished_all() -> str:
    return _join("executor", "evt", "*", "*", "finished")


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


def notifier_events() -> str:
    return _join("notifier", "evt", ">")


# --- run output --------------------------------------------------------------------------------


def run_output(tenant: str, run_id: str) -> str:
    return _join("run", "out", token(tenant), token(run_id))


def run_outputs() -> str:
    return _join("run", "out", ">")


# --- services and dead letters -----------------------------------------------------------------


def service(actor: ActorName, verb: str) -> str:
    return _join(actor.value, "svc", token(verb))


def consumer_next(stream: str, durable: str) -> str:
    """JetStream's API subject for pulling messages from a durable consumer (not under `ab.`)."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{token(stream)}.{token(durable)}"


def dead_letter(actor: ActorName) -> str:
    return _join("dlq", actor.value)


def dead_letters() -> str:
    return _join("dlq", ">")
