"""The AsyncAPI document of the bus: current, valid AsyncAPI 3.0.0, complete, and true to the code.

docs/asyncapi.json must equal `python -m bus.asyncapi` (refresh it with `make asyncapi`); it validates
against the AsyncAPI Initiative's JSON Schema (tests/fixtures/asyncapi-3.0.0.json); every `ab.*` subject
builder and every schemas Message is in it; the catalog agrees with what the actors consume and serve;
and what a real chat turn puts on the bus is what the document says, down to payloads and headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import importlib
import inspect
import itertools
import json
import re
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]  # (the mcp package depends on it; no stubs)
import pytest
from nats.aio.msg import Msg
from pydantic_ai.models.test import TestModel

import schemas.__main__ as schema_docs
from actors.conversation.actor import ConversationActor
from actors.conversation.config import ConversationConfig
from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from actors.notifier.actor import NotifierActor
from actors.notifier.config import NotifierConfig
from actors.research.actor import ResearchActor
from actors.research.config import ResearchConfig
from actors.scheduler.actor import SchedulerActor
from actors.scheduler.config import SchedulerConfig
from actors.trigger.actor import TriggerActor
from actors.trigger.config import TriggerActorConfig
from bus import asyncapi, catalog, cli, subjects
from bus.actor import Actor, Consumer, Endpoint
from bus.catalog import Reading, members
from bus.config import BusConfig
from bus.credentials import Role
from bus.permissions import ACCESS, permissions
from bus.streams import ALL_STREAMS
from schemas._base import Message
from schemas.health import HealthCheck
from tests.conftest import Platform, wait_until

Start = Callable[..., Awaitable[Platform]]
ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "docs" / "asyncapi.json"
SPEC = Path(__file__).resolve().parent / "fixtures" / "asyncapi-3.0.0.json"
DB = "postgresql://unused@127.0.0.1/unused"  # the actors are built, not started: nothing connects

# Message types deliberately on no channel (none today): name -> why
NOT_ON_THE_BUS: dict[str, str] = {}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi.document()


def _actors() -> list[Actor]:
    bus = BusConfig()
    return [
        ConversationActor(bus, ConversationConfig(database_url=DB)),
        ExecutorActor(bus, ExecutorConfig(database_url=DB)),
        SchedulerActor(bus, SchedulerConfig(database_url=DB)),
        TriggerActor(bus, TriggerActorConfig(database_url=DB)),
        NotifierActor(bus, NotifierConfig(database_url=DB)),
        ResearchActor(bus, ResearchConfig(database_url=DB)),
    ]


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# --- the document ------------------------------------------------------------------------------


def test_the_checked_in_document_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert CHECKED_IN.read_text() == asyncapi.render(), "docs/asyncapi.json is stale: run `make asyncapi`"
    assert cli.main(["asyncapi"]) == 0
    assert capsys.readouterr().out == asyncapi.render()


def test_it_is_a_valid_asyncapi_3_document(document: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SPEC.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    broken = copy.deepcopy(document)  # the validator does check: an operation with no action is refused
    del broken["operations"]["gateway.send.conversation.command"]["action"]
    assert not validator.is_valid(broken)


def test_what_the_json_schema_cannot_check(document: dict[str, Any]) -> None:
    """References resolve; addresses and parameters agree; operations name their channel's messages."""
    for ref in _refs(document):
        _resolve(document, ref)
    for name, channel in document["channels"].items():
        named = set(re.findall(r"\{(\w+)\}", channel["address"] or ""))
        assert named == set(channel.get("parameters", {})), name
        for message in channel["messages"].values():
            assert message["$ref"].startswith("#/components/messages/")
    for name, operation in document["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        assert all(m["$ref"].startswith(channel_ref + "/messages/") for m in operation["messages"]), name
        if "reply" in operation:
            reply_ref = operation["reply"]["channel"]["$ref"]
            assert all(m["$ref"].startswith(reply_ref + "/messages/") for m in operation["reply"]["messages"]), name


def test_channels_carry_the_builders_own_subjects(document: dict[str, Any]) -> None:
    channels = document["channels"]
    assert channels["conversation.command"]["address"] == "ab.conversation.cmd.{tenant}.{conversation_id}"
    assert channels["executor.subrun"]["parameters"]["origin"]["enum"] == ["sub", "research", "resume", "resolve"]
    assert channels["research.phase"]["address"] == "ab.research.evt.{tenant}.{job_id}.phase"
    assert channels["dead_letters"]["address"] == "ab.dlq.{actor}"
    assert channels["conversation.command"]["parameters"]["tenant"]["location"] == "$message.header#/Ab-Tenant"
    ops = document["operations"]
    assert ops["conversation.receive.conversation.command"]["x-agentbus-durable"] == "conversation-cmd"
    assert {o["x-agentbus-actor"] for o in ops.values() if o["channel"]["$ref"] == "#/channels/executor.subrun"} == {
        "executor",
        "research",
        "trigger",
    }
    assert ops["research.send.executor.subrun"]["x-agentbus-only"] == {"origin": ["research"]}
    assert ops["trigger.send.executor.subrun"]["x-agentbus-only"] == {"origin": ["resolve"]}
    assert ops["gateway.send.conversation.svc.create"]["reply"]["messages"] == [
        {"$ref": "#/channels/inbox/messages/ConversationView"},
        {"$ref": "#/channels/inbox/messages/ErrorReply"},
    ]


# --- complete ------------------------------------------------------------------------------------


def _sample_calls(builder: Callable[..., str]) -> list[str]:
    hints = typing.get_type_hints(builder)
    choices: list[list[object]] = []
    for name, parameter in inspect.signature(builder).parameters.items():
        if parameter.default is not inspect.Parameter.empty:
            break  # a wildcard left at its default (and every argument after it)
        kind = hints.get(name)
        choices.append(list(kind) if isinstance(kind, type) and issubclass(kind, enum.Enum) else ["x1"])
    return [builder(*args) for args in itertools.product(*choices)]


def test_every_ab_subject_builder_is_in_the_document(document: dict[str, Any]) -> None:
    builders = set()
    for name in subjects.__all__:
        builder = getattr(subjects, name)
        if not inspect.isfunction(builder) or typing.get_type_hints(builder).get("return") is not str:
            continue
        try:
            built = _sample_calls(builder)
        except subjects.InvalidToken:  # takes a subject, not tokens (e.g. token itself)
            continue
        if built and all(s.startswith("ab.") for s in built):
            builders.add(name)
    assert {"conversation_command", "service", "dead_letter", "tenant_events"} <= builders
    named = set()
    for channel in document["channels"].values():
        named |= {channel.get("x-agentbus-builder")} | set(channel.get("x-agentbus-patterns", {}))
    assert builders - named == set()


def _message_classes() -> set[type[Message]]:
    for module in schema_docs.MODULES:
        importlib.import_module(f"schemas.{module}")
    found: set[type[Message]] = set()
    todo = list(Message.__subclasses__())
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return found


def test_every_schemas_message_is_on_a_channel(document: dict[str, Any]) -> None:
    carried = set()
    for channel in document["channels"].values():
        carried |= {ref["$ref"].rsplit("/", 1)[1] for ref in channel["messages"].values()}
    names = {cls.__name__ for cls in _message_classes()}
    assert len(names) > 80
    assert names - carried == set(NOT_ON_THE_BUS)
    for name in names & carried:
        payload = document["components"]["messages"][name]["payload"]["$ref"]
        assert _resolve(document, payload)["properties"]["type"]["enum"], name  # the tag discriminates


def test_every_header_is_described(document: dict[str, Any]) -> None:
    headers = document["components"]["schemas"]["DeadLetterHeaders"]["properties"]
    assert set(headers) == {"Nats-Msg-Id", "Ab-Correlation-Id", "traceparent", "Ab-Tenant", "Ab-Sent-At"} | {
        "Ab-Run-Id",
        "Ab-Dead-Reason",
        "Ab-Dead-Subject",
        "Ab-Dead-Stream-Seq",
        "Ab-Dead-Deliveries",
    }


# --- true to the code ----------------------------------------------------------------------------


def test_the_catalog_is_what_the_actors_consume_and_serve() -> None:
    declared_endpoints = {(e.actor.value, e.verb, e.request) for e in catalog.SERVICES}
    declared_durables = {
        (r.durable, c.name, frozenset(c.messages))
        for c in catalog.CHANNELS
        for r in c.readers
        if r.reading == Reading.DURABLE
    }
    endpoints, durables = set(), set()
    for actor in _actors():
        endpoints.add((actor.name.value, "health", HealthCheck))  # every actor's, added by Actor.start
        for route in actor.routes():
            match route:
                case Endpoint():
                    endpoints.add((actor.name.value, route.verb, route.request))
                case Consumer():
                    consumed = frozenset(members(route.inbox))
                    matching = [
                        c
                        for c in catalog.CHANNELS
                        if all(
                            subjects.pattern_matches(route.spec.filter_subject, s) for s in asyncapi.sample_subjects(c)
                        )
                    ]
                    assert matching, route.spec.durable
                    durables |= {(route.spec.durable, c.name, consumed) for c in matching}
    assert endpoints == declared_endpoints
    assert durables == declared_durables


def test_readers_may_read_what_the_catalog_says_they_read() -> None:
    for channel in catalog.CHANNELS:
        samples = asyncapi.sample_subjects(channel)
        streams = [
            s for s in ALL_STREAMS if all(any(subjects.pattern_matches(p, x) for p in s.subjects) for x in samples)
        ]
        for reader in channel.readers:
            if reader.role is Role.ADMIN:
                continue
            if reader.reading == Reading.SUBSCRIPTION:
                allowed = permissions(reader.role).subscribe
                assert all(any(subjects.pattern_matches(p, s) for p in allowed) for s in samples), (
                    reader,
                    channel.name,
                )
            else:
                assert streams and streams[0] in ACCESS[reader.role].reads, (reader, channel.name)


# --- served, and what the bus really carries -----------------------------------------------------


def _channel_pattern(channel: dict[str, Any]) -> re.Pattern[str]:
    def parameter(match: re.Match[str]) -> str:
        values = channel["parameters"][match.group(1)].get("enum")
        return "(?:" + "|".join(map(re.escape, values)) + ")" if values else r"[^.]+"

    return re.compile(re.sub(r"\\\{(\w+)\\\}", parameter, re.escape(channel["address"])) + "$")


def _validate(document: dict[str, Any], ref: str, instance: Any) -> None:
    schema = {"$ref": ref, "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


@contextlib.asynccontextmanager
async def _watching(platform: Platform) -> AsyncIterator[list[Msg]]:
    """Every message published under `ab.` meanwhile (service requests too), and the replies to those
    requests (on the requesters' inboxes), in the order the server sent them."""
    seen: list[Msg] = []

    async def keep(msg: Msg) -> None:
        seen.append(msg)

    subscriptions = [await platform.bus.nc.subscribe(p, cb=keep) for p in ("ab.>", "_INBOX.>")]
    await platform.bus.nc.flush()  # the server has the subscriptions before anything is published
    try:
        yield seen
        await asyncio.sleep(0.5)  # the last events reach this subscriber too
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()


def _channels_of(document: dict[str, Any], seen: list[Msg]) -> set[str]:
    """The channels `seen` went on. Each message must be on a channel of the document that carries its
    type, with payload and headers valid against the document's schemas; each reply to a service request
    one of the replies the endpoint's operation names."""
    channels = {name: (_channel_pattern(c), c) for name, c in document["channels"].items() if c["address"]}
    messages = document["components"]["messages"]
    replies = {
        op["channel"]["$ref"].rsplit("/", 1)[1]: {r["$ref"].rsplit("/", 1)[1] for r in op["reply"]["messages"]}
        for op in document["operations"].values()
        if op["action"] == "receive" and "reply" in op
    }
    asked: dict[str, str] = {}  # a request's reply subject -> its service channel
    used, answered = set(), set()
    for msg in seen:
        if not msg.subject.startswith(f"{subjects.PREFIX}."):
            continue  # a reply, or NATS's own (a KV watch's `$KV.…` delivered to an inbox): not the bus's
        body = json.loads(msg.data)
        matched = [name for name, (pattern, _) in channels.items() if pattern.match(msg.subject)]
        assert matched, f"{msg.subject} is on no channel of the document"
        carried = {ref["$ref"].rsplit("/", 1)[1] for name in matched for ref in channels[name][1]["messages"].values()}
        names = [n for n in carried if messages[n]["name"] == body["type"]]
        assert names, f"{body['type']} on {msg.subject}: the document says {sorted(carried)}"
        _validate(document, messages[names[0]]["payload"]["$ref"], body)
        _validate(document, messages[names[0]]["headers"]["$ref"], dict(msg.headers or {}))
        used |= set(matched)
        if msg.reply and matched[0] in replies:
            asked[msg.reply] = matched[0]
    for msg in seen:  # the replies (their own subscription: not ordered with the requests)
        if (service := asked.get(msg.subject)) is None:
            continue  # not an answer to a service request watched here (a JetStream API answer, ...)
        body = json.loads(msg.data)
        names = [n for n in replies[service] if messages[n]["name"] == body.get("type")]
        assert names, f"{body.get('type')} answering {service}: the document says {sorted(replies[service])}"
        _validate(document, messages[names[0]]["payload"]["$ref"], body)
        answered.add(service)
    assert used and answered
    return used | {f"{service} answered" for service in answered}


async def test_served_and_true_to_a_real_chat_turn(start_platform: Start, document: dict[str, Any]) -> None:
    platform = await start_platform(TestModel(custom_output_text="hello there", call_tools=[]))
    async with httpx.AsyncClient(base_url=platform.url) as anonymous:  # no API key, like /schema
        response = await anonymous.get("/asyncapi.json")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert response.json() == json.loads(asyncapi.render())

    async with _watching(platform) as seen, platform.client() as client:
        conversation = (await client.post("/v1/conversations", json={})).json()["id"]
        for stream in (False, True):
            answer = await client.post(
                f"/v1/conversations/{conversation}/messages", json={"message": "Hi", "stream": stream}
            )
            assert answer.status_code == 200, answer.text
    used = _channels_of(document, seen)
    assert {"conversation.command", "executor.command", "run.output", "executor.finished"} <= used
    assert {"conversation.turn", "conversation.svc.create", "conversation.svc.create answered"} <= used


async def test_true_to_a_delegated_task_and_its_notification(start_platform: Start, document: dict[str, Any]) -> None:
    actors = ("conversation", "executor", "scheduler", "trigger", "notifier")  # what /health asks
    done = TestModel(custom_output_text="done", call_tools=[])
    platform = await start_platform(done, background=True, research=False, actors=actors)
    async with _watching(platform) as seen, platform.client() as client:
        body = {"task_type": "delegation", "prompt": "do it", "notification_config": {"channels": ["in_app"]}}
        response = await client.post("/v1/tasks", json=body)
        assert response.status_code == 202, response.text

        async def notified() -> bool:
            return bool((await client.get("/v1/notifications")).json()["notifications"])

        await wait_until(notified, timeout=30, what="the task's in-app notification")
        assert (await client.get("/health")).status_code == 200

        async def delivered() -> bool:
            return any(m.subject.endswith(".delivered") for m in seen)

        await wait_until(delivered, timeout=30, what="the delivery's end")
    used = _channels_of(document, seen)
    assert {"scheduler.svc.create", "scheduler.changed", "scheduler.run_finished", "executor.finished"} <= used
    assert {"notifier.command", "notifier.in_app", "notifier.delivery_finished", "notifier.svc.health"} <= used
    assert {"scheduler.svc.create answered", "notifier.svc.health answered"} <= used
