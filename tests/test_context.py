"""A conversation of any length on a NATS with its default 1 MB max_payload (guarantee 9), end to end:
the gateway, the conversation and executor actors, a real nats-server started with no max_payload
setting and PostgreSQL; only the model is replaced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo

from bus import subjects
from bus.embedded import EmbeddedNats
from tests.conftest import Platform
from tests.models import prompts_of, replying

NATS_DEFAULT_MAX_PAYLOAD = 1024 * 1024
PROMPT_CHARS = 95_000  # under the gateway's 100,000-character prompt limit


@dataclass
class Seen:
    prompts: list[int] = field(default_factory=list)  # how many earlier prompts each model request saw
    history_chars: list[int] = field(default_factory=list)  # their characters, the new prompt's included
    requests: list[int] = field(default_factory=list)  # each RunRequest's size on the bus


async def test_a_conversation_past_2_mb_keeps_working_on_nats_default_max_payload(
    nats_server: EmbeddedNats, start_platform: Callable[..., Awaitable[Platform]]
) -> None:
    assert nats_server.max_payload is None  # the server's own default, as compose.yaml runs it
    seen = Seen()

    def reply(messages: list[ModelMessage], info: AgentInfo) -> str:
        prompts = prompts_of(messages)
        seen.prompts.append(len(prompts))
        seen.history_chars.append(sum(map(len, prompts)))
        return f"reply to turn {len(prompts)}"

    platform = await start_platform(replying(reply))
    assert platform.bus.nc.max_payload == NATS_DEFAULT_MAX_PAYLOAD

    async def on_request(msg: Msg) -> None:
        seen.requests.append(len(msg.data))

    sub = await platform.bus.nc.subscribe(subjects.executor_commands(), cb=on_request)
    turns = 24  # 24 x 95 KB of prompts: a history of 2.2 MB by the last turn
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        for turn in range(1, turns + 1):
            prompt = f"turn {turn} " + "x" * PROMPT_CHARS
            answered = await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": prompt})
            assert answered.status_code == 200, answered.text
            assert answered.json()["message"]["content"].strip() == f"reply to turn {turn}"
        messages: list[dict[str, str]] = []  # every message, in pages the bus can carry, newest page first
        params = {"limit": "1000"}
        while page := (await client.get(f"/v1/conversations/{conversation_id}/messages", params=params)).json():
            if not page["messages"]:
                break
            messages[:0] = page["messages"]
            params["before"] = page["messages"][0]["id"]
    await sub.unsubscribe()
    assert seen.prompts == list(range(1, turns + 1))  # every turn, once, seeing every earlier one
    assert seen.history_chars[-1] > 2 * 1024 * 1024
    assert len(seen.requests) == turns and max(seen.requests) < 200 * 1024  # the commands stay small
    assert [m["content"].split(" ")[1] for m in messages[::2]] == [str(t) for t in range(1, turns + 1)]
    assert len(messages) == 2 * turns and sum(len(m["content"]) for m in messages) > 2 * 1024 * 1024
