"""The AsyncAPI 3.0.0 document of the bus, generated from `bus/catalog.py`, `bus/subjects.py` and `schemas/`.

`python -m bus.asyncapi` prints it (`make asyncapi` writes docs/asyncapi.json, which a test keeps equal to
this output); the gateway serves it at `GET /asyncapi.json`. Nothing in it is written by hand:

- a channel per catalog entry, its address the subject builder's own output with `{parameter}` for each
  argument (`ab.conversation.cmd.{tenant}.{conversation_id}`), plus each service endpoint
  (`ab.<actor>.svc.<verb>`) and the requester's reply inbox;
- the payload schemas are msgspec's (`msgspec.json.schema_components`), tagged by `"type"`;
- the headers are those of `bus/headers.py`;
- who sends on a channel is who the nats-server permissions (`bus/permissions.py`) let publish there;
  who receives is the catalog's, checked against the actors' routes by tests/test_asyncapi.py.

msgspec writes OpenAPI's `discriminator` object on a tagged union; AsyncAPI's Schema Object takes a
property name there instead, so it is carried as `x-discriminator` (every member's `type` is an enum of
its one tag, which is what a validator checks).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import importlib
import inspect
import itertools
import json
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from bus import catalog, subjects
from bus.catalog import Channel, Endpoint
from bus.credentials import Role
from bus.headers import Header
from bus.permissions import permissions, tenant_permissions
from bus.streams import ALL_STREAMS
from schemas._base import Message

__all__ = ["address", "document", "message_types", "pattern_builders", "render", "sample_subjects"]

VERSION = "0.1.0"
SCHEMAS = "#/components/schemas/"
MESSAGES = "#/components/messages/"
ADDRESS_SAMPLE = "x1"  # the value a parameter takes in a sample subject (what permissions are matched against)
TENANT_USER = "tenant"  # a tenant's own NATS user (`agentbus keys create --nats`), as a sender
INBOX = "inbox"
DEAD_LETTER = "DeadLetter"
JSON = "application/json"


# --- subjects ------------------------------------------------------------------------------------


def _parameters(builder: Callable[..., str]) -> list[str]:
    """The builder's arguments that a subject names; one with a default (a wildcard) is left at it."""
    return [n for n, p in inspect.signature(builder).parameters.items() if p.default is inspect.Parameter.empty]


class _Placeholder:
    """Stands in for an enum argument (an ActorName, a RunOrigin) while the address is built."""

    def __init__(self, name: str) -> None:
        self.value = f"zz{name}zz"


def address(channel: Channel) -> str:
    """The channel's address: the builder's subject with `{name}` for each argument not fixed."""
    hints = typing.get_type_hints(channel.builder)
    args: dict[str, Any] = {}
    for name in _parameters(channel.builder):
        if name in channel.fixed:
            args[name] = channel.fixed[name]
        elif isinstance(hints.get(name), type) and issubclass(hints[name], enum.Enum):
            args[name] = _Placeholder(name)
        else:
            args[name] = f"zz{name}zz"
    subject = channel.builder(**args)
    for name in _parameters(channel.builder):
        subject = subject.replace(f"zz{name}zz", "{" + name + "}")
    return subject


def _samples(channel: Channel) -> list[tuple[str, dict[str, str]]]:
    """Real subjects of the channel, each with the values of its enumerated parameters: a sample token
    for each free argument, every value of an enumerated one."""
    hints = typing.get_type_hints(channel.builder)
    free = [n for n in _parameters(channel.builder) if n not in channel.fixed]
    choices: list[list[str]] = [list(channel.values.get(name, (ADDRESS_SAMPLE,))) for name in free]
    out = []
    for combo in itertools.product(*choices):
        args: dict[str, Any] = dict(zip(free, combo, strict=True))
        for name, value in args.items():
            kind = hints.get(name)
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                args[name] = kind(value)
        chosen = {n: v for n, v in zip(free, combo, strict=True) if n in channel.values}
        out.append((channel.builder(**{**channel.fixed, **args}), chosen))
    return out


def sample_subjects(channel: Channel) -> list[str]:
    return [subject for subject, _ in _samples(channel)]


def _may_publish(patterns: Sequence[str], samples: Sequence[str]) -> list[str]:
    return [s for s in samples if any(subjects.pattern_matches(p, s) for p in patterns)]


def _publishers(samples: Sequence[str]) -> dict[str, list[str]]:
    """Who the nats-server permissions let publish on the channel: role (or tenant NATS user) -> the
    sample subjects it may publish (all of them, or the enumerated values it is confined to)."""
    out = {}
    for role in Role:
        if role is Role.ADMIN:  # may publish anything (`agentbus run`, the CLI): not a sender of its own
            continue
        if allowed := _may_publish(permissions(role).publish, samples):
            out[role.value] = allowed
    if allowed := _may_publish(tenant_permissions(ADDRESS_SAMPLE).publish, samples):
        out[TENANT_USER] = allowed
    return out


def _stream(samples: Sequence[str]) -> str | None:
    for spec in ALL_STREAMS:
        if all(any(subjects.pattern_matches(p, s) for p in spec.subjects) for s in samples):
            return spec.name
    return None


def _patterns(samples: Sequence[str]) -> dict[str, list[str]]:
    """The wildcard builders of bus/subjects.py with a pattern that matches subjects of the channel."""
    out = {}
    for name, patterns in pattern_builders().items():
        if shown := [p.shown for p in patterns if any(subjects.pattern_matches(p.sample, s) for s in samples)]:
            out[name] = shown
    return out


@dataclass(frozen=True, slots=True)
class _Pattern:
    sample: str  # built with a sample token per string argument: what real subjects are matched against
    shown: str  # with `{argument}` in place of each


@functools.cache
def pattern_builders() -> dict[str, tuple[_Pattern, ...]]:
    """`bus/subjects.py`'s subscription and permission patterns under `ab.`, built for every value of each
    enum argument."""
    out = {}
    for name in subjects.__all__:
        builder = getattr(subjects, name)
        if not inspect.isfunction(builder) or typing.get_type_hints(builder).get("return") is not str:
            continue
        if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(builder).parameters.values()):
            continue  # js_api(*tokens): not under ab.
        hints = typing.get_type_hints(builder)
        parameters = _parameters(builder)
        enums = [p for p in parameters if isinstance(hints.get(p), type) and issubclass(hints[p], enum.Enum)]
        built = []
        try:
            for values in itertools.product(*(list(hints[p]) for p in enums)):
                chosen = dict(zip(enums, values, strict=True))
                sample = builder(**{p: chosen.get(p, ADDRESS_SAMPLE) for p in parameters})
                shown = builder(**{p: chosen.get(p, f"zz{p}zz") for p in parameters})
                for p in parameters:
                    shown = shown.replace(f"zz{p}zz", "{" + p + "}")
                built.append(_Pattern(sample, shown))
        except subjects.InvalidToken:  # takes a subject, not tokens
            continue
        if built and all(
            p.sample.startswith(f"{subjects.PREFIX}.") and ("*" in p.sample or ">" in p.sample) for p in built
        ):
            out[name] = tuple(dict.fromkeys(built))
    return out


# --- schemas -------------------------------------------------------------------------------------


def _raw_default(value: object) -> object:
    if isinstance(value, msgspec.Raw):
        return msgspec.json.decode(value)
    raise NotImplementedError  # msgspec's enc_hook protocol: "not a type this hook handles"


@contextlib.contextmanager
def _raw_defaults() -> Iterator[None]:
    """msgspec 0.22 cannot write a `msgspec.Raw` field's default into a schema (its `to_builtins` refuses
    Raw): while the schemas are made, its schema module's `to_builtins` decodes a Raw as the JSON it holds."""
    module, name = importlib.import_module("msgspec._json_schema"), "to_builtins"
    original = getattr(module, name)
    setattr(module, name, functools.partial(original, enc_hook=_raw_default))
    try:
        yield
    finally:
        setattr(module, name, original)


def _schema_hook(kind: type) -> dict[str, Any]:
    if kind is object:  # dict[str, object]: any JSON value
        return {"description": "any JSON value"}
    raise NotImplementedError  # msgspec's schema_hook protocol: "not a type this hook handles"


def _asyncapi_schema(node: Any) -> Any:
    """msgspec's schema with OpenAPI's discriminator object moved to `x-discriminator`."""
    if isinstance(node, dict):
        return {("x-discriminator" if k == "discriminator" else k): _asyncapi_schema(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_asyncapi_schema(v) for v in node]
    return node


def message_types() -> list[type[Message]]:
    """Every message type the document carries, in catalog order."""
    seen: dict[type[Message], None] = {}
    for channel in catalog.CHANNELS:
        seen.update(dict.fromkeys(channel.messages))
    for endpoint in catalog.SERVICES:
        seen.update(dict.fromkeys((endpoint.request, endpoint.reply)))
    seen[catalog.ERROR_REPLY] = None
    return list(seen)


def _schemas(types_: Sequence[type[Message]]) -> dict[str, Any]:
    with _raw_defaults():
        _, components = msgspec.json.schema_components(
            types_, schema_hook=_schema_hook, ref_template=SCHEMAS + "{name}"
        )
    return {name: _asyncapi_schema(components[name]) for name in sorted(components)}


def _headers_schema() -> dict[str, Any]:
    def header(h: Header) -> dict[str, Any]:
        if h not in catalog.HEADERS:
            raise KeyError(f"header {h.value} has no description: add it to HEADERS in bus/catalog.py")
        set_on, meaning = catalog.HEADERS[h]
        return {"type": "string", "description": f"{meaning} (set on: {set_on})"}

    bus = [h for h in Header if h not in catalog.DEAD_HEADERS]
    return {
        "BusHeaders": {
            "type": "object",
            "description": "The headers of every message published on the bus (bus/headers.py).",
            "properties": {h.value: header(h) for h in bus},
            "required": [h.value for h in catalog.TRACE_HEADERS],
        },
        "DeadLetterHeaders": {
            "type": "object",
            "description": "A dead letter's headers: the original ones (but Nats-Msg-Id) and why it was given up on.",
            "properties": {h.value: header(h) for h in Header},
            "required": [h.value for h in (*catalog.TRACE_HEADERS, *catalog.DEAD_HEADERS)],
        },
    }


def _summary(kind: type) -> str:
    doc = inspect.getdoc(kind) if "__doc__" in kind.__dict__ and kind.__doc__ else ""
    return " ".join((doc or "").split())


def _messages(types_: Sequence[type[Message]], replies: set[type[Message]], channels: dict[str, Any]) -> dict[str, Any]:
    carried_on: dict[str, list[str]] = {}
    for name, channel in channels.items():
        if name != INBOX:
            for carried in channel["messages"]:
                carried_on.setdefault(carried, []).append(name)
    for endpoint in catalog.SERVICES:
        carried_on.setdefault(endpoint.reply.__name__, []).append(f"{endpoint.actor.value}.svc.{endpoint.verb} (reply)")
    out: dict[str, Any] = {}
    for kind in types_:
        tag = kind.__struct_config__.tag
        message: dict[str, Any] = {"name": str(tag), "title": kind.__name__, "contentType": JSON}
        message["summary"] = _summary(kind) or "On " + ", ".join(carried_on[kind.__name__]) + "."
        if kind not in replies:  # a reply is the micro service's response: it carries no headers
            message["headers"] = {"$ref": SCHEMAS + "BusHeaders"}
        message["payload"] = {"$ref": SCHEMAS + kind.__name__}
        out[kind.__name__] = message
    out[DEAD_LETTER] = {
        "name": "dead_letter",
        "title": DEAD_LETTER,
        "summary": "A message an actor gave up on: its original body, as it was consumed (any of the actor's"
        " command or event messages, or bytes that did not decode).",
        "contentType": JSON,
        "headers": {"$ref": SCHEMAS + "DeadLetterHeaders"},
        "payload": {"description": "the original body, unchanged"},
    }
    return out


# --- channels and operations ---------------------------------------------------------------------


def _payload_fields(kind: type[Message]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(kind)}


def _channel_parameters(channel: Channel) -> dict[str, Any]:
    out = {}
    for name in _parameters(channel.builder):
        if name in channel.fixed:
            continue
        if name not in catalog.PARAMETERS:
            raise KeyError(f"subject parameter {name!r} has no description: add it to PARAMETERS in bus/catalog.py")
        parameter: dict[str, Any] = {"description": catalog.PARAMETERS[name]}
        if name in channel.values:
            parameter["enum"] = list(channel.values[name])
        if name == "tenant":
            parameter["location"] = f"$message.header#/{Header.TENANT.value}"
        elif channel.messages and all(name in _payload_fields(m) for m in channel.messages):
            parameter["location"] = f"$message.payload#/{name}"
        out[name] = parameter
    return out


def _refs(prefix: str, names: Sequence[str]) -> list[dict[str, str]]:
    return [{"$ref": prefix + n} for n in names]


def _message_map(names: Sequence[str]) -> dict[str, Any]:
    return {n: {"$ref": MESSAGES + n} for n in names}


def _catalog_channel(channel: Channel) -> tuple[dict[str, Any], dict[str, Any]]:
    samples = sample_subjects(channel)
    names = [m.__name__ for m in channel.messages] or [DEAD_LETTER]
    body: dict[str, Any] = {
        "address": address(channel),
        "title": channel.name,
        "summary": channel.summary,
        "messages": _message_map(names),
    }
    if parameters := _channel_parameters(channel):
        body["parameters"] = parameters
    body["x-agentbus-kind"] = channel.kind.value
    body["x-agentbus-builder"] = channel.builder.__name__
    body["x-agentbus-patterns"] = _patterns(samples)
    if (stream := _stream(samples)) is not None:
        body["x-agentbus-stream"] = stream
    ref = "#/channels/" + channel.name
    messages = [{"$ref": f"{ref}/messages/{n}"} for n in names]
    operations: dict[str, Any] = {}
    for sender, allowed in _publishers(samples).items():
        operation: dict[str, Any] = {
            "action": "send",
            "channel": {"$ref": ref},
            "summary": f"{sender} publishes {channel.name}",
            "messages": messages,
            "x-agentbus-actor": sender,
        }
        if len(allowed) < len(samples):  # confined to some values of an enumerated parameter
            chosen = [values for subject, values in _samples(channel) if subject in allowed]
            operation["x-agentbus-only"] = {n: sorted({c[n] for c in chosen}) for n in chosen[0]}
        operations[f"{sender}.send.{channel.name}"] = operation
    for reader in channel.readers:
        receive: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": ref},
            "summary": f"{reader.role.value} receives {channel.name}" + (f": {reader.why}" if reader.why else ""),
            "messages": messages,
            "x-agentbus-actor": reader.role.value,
            "x-agentbus-reading": reader.reading.value,
        }
        if reader.durable is not None:
            receive["x-agentbus-durable"] = reader.durable
            receive["bindings"] = {"nats": {"queue": reader.durable, "bindingVersion": "0.1.0"}}
        operations[f"{reader.role.value}.receive.{channel.name}"] = receive
    return body, operations


def _clients(subject: str) -> list[str]:
    return [
        role.value
        for role in Role
        if role is not Role.ADMIN and any(subjects.pattern_matches(p, subject) for p in permissions(role).publish)
    ]


def _service(endpoint: Endpoint) -> tuple[str, dict[str, Any], dict[str, Any]]:
    name = f"{endpoint.actor.value}.svc.{endpoint.verb}" + (".instance" if endpoint.per_instance else "")
    ref = "#/channels/" + name
    request = endpoint.request.__name__
    summary = f"{endpoint.actor.value} answers {endpoint.verb}" + (f": {endpoint.summary}" if endpoint.summary else "")
    if endpoint.per_instance:
        subject = subjects.instance_health(endpoint.actor, ADDRESS_SAMPLE)
        shown = subjects.instance_health(endpoint.actor, "zzinstance_idzz").replace("zzinstance_idzz", "{instance_id}")
        builder = subjects.instance_health.__name__
    else:
        subject = shown = subjects.service(endpoint.actor, endpoint.verb)
        builder = subjects.service.__name__
    body = {
        "address": shown,
        "title": name,
        "summary": summary,
        "messages": _message_map([request]),
        "x-agentbus-kind": "service",
        "x-agentbus-builder": builder,
        "x-agentbus-patterns": _patterns([subject]),
    }
    if endpoint.per_instance:
        body["parameters"] = {"instance_id": {"description": catalog.PARAMETERS["instance_id"]}}
    replies = [endpoint.reply.__name__, catalog.ERROR_REPLY.__name__]
    reply = {"channel": {"$ref": "#/channels/" + INBOX}, "messages": _refs(f"#/channels/{INBOX}/messages/", replies)}
    messages = [{"$ref": f"{ref}/messages/{request}"}]
    operations: dict[str, Any] = {
        f"{endpoint.actor.value}.receive.{name}": {
            "action": "receive",
            "channel": {"$ref": ref},
            "summary": summary,
            "messages": messages,
            "reply": reply,
            "x-agentbus-actor": endpoint.actor.value,
            "x-agentbus-reading": "service",
            "bindings": {"nats": {"queue": "q", "bindingVersion": "0.1.0"}},  # nats.micro's queue group
        }
    }
    if endpoint.per_instance:
        del operations[f"{endpoint.actor.value}.receive.{name}"]["bindings"]  # every replica its own subject
    for client in _clients(subject):
        operations[f"{client}.send.{name}"] = {
            "action": "send",
            "channel": {"$ref": ref},
            "summary": f"{client} asks {name}",
            "messages": messages,
            "reply": reply,
            "x-agentbus-actor": client,
        }
    return name, body, operations


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document, as JSON-ready data."""
    types_ = message_types()
    replies = {e.reply for e in catalog.SERVICES} | {catalog.ERROR_REPLY}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel in catalog.CHANNELS:
        channels[channel.name], ops = _catalog_channel(channel)
        operations |= ops
    for endpoint in catalog.SERVICES:
        name, body, ops = _service(endpoint)
        channels[name] = body
        operations |= ops
    reply_names = [t.__name__ for t in types_ if t in replies]
    channels[INBOX] = {
        "address": None,
        "title": INBOX,
        "summary": "The requester's reply inbox (`_INBOX.<role>.…`, `_INBOX.tenant.<tenant>.…` for a tenant's"
        " own NATS user): each service request's reply, or ErrorReply.",
        "messages": _message_map(reply_names),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "agentbus bus",
            "version": VERSION,
            "description": "Every subject, message and header of the agentbus NATS bus (docs/bus.md), generated"
            " by `python -m bus.asyncapi` from bus/catalog.py, bus/subjects.py, bus/permissions.py and schemas/."
            " An operation's `x-agentbus-actor` is the process that sends or receives; senders are exactly the"
            " roles the nats-server permissions let publish there.",
        },
        "defaultContentType": JSON,
        "servers": {
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "`make run`'s NATS (NATS_URL); every connection authenticates with its role's nkey",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {**_headers_schema(), **_schemas(types_)},
            "messages": _messages(types_, replies, channels),
        },
    }


def render() -> str:
    """The document as the JSON text docs/asyncapi.json holds."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
