"""A long conversation's RunRequests and the conversation actor's CPU per turn, history inline
(before: every RunRequest carries it whole) against by reference (after: past 64 KiB).

`python -m tests.bench.history [--smoke]` (smoke: 10 turns instead of 200). The conversation actor
is its own process (its CPU from /proc); the executor runs in this process with a FunctionModel
answering ~500 bytes a turn; turns are not streamed, sent one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

import uvloop
from nats.aio.msg import Msg

from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from bus import subjects
from bus.client import Bus
from bus.codec import decode
from bus.headers import Trace, new_id
from bus.streams import CONVERSATION_EVT
from schemas.conversation import ConversationView, CreateConversation, PostMessage, TurnCompleted, TurnFailed
from schemas.runs import RunRequest
from tests.bench.harness import Infra, Report, Scale, cpu_seconds, infra, processes, services_up
from tests.models import replying

TENANT = "bench"
PROMPT = "Tell me more about the previous answer, with details. " * 8  # ~440 bytes
REPLY = "Here is a longer answer that goes on for a while. " * 10  # ~500 bytes


@dataclass(frozen=True)
class Figures:
    mode: str
    turns: int
    last_request_bytes: int
    max_request_bytes: int
    history_bytes: int  # the last turn's history
    cpu_ms_per_turn: float


async def one_mode(servers: Infra, logs: Path, mode: str, inline_bytes: int, turns: int) -> Figures:
    env = servers.env(AGENTBUS_HISTORY_INLINE_BYTES=str(inline_bytes))
    bus_config = servers.bus_config()
    sizes: list[tuple[int, RunRequest]] = []

    async def on_request(msg: Msg) -> None:
        sizes.append((len(msg.data), decode(msg.data, RunRequest)))

    with processes({"conversation": ["-m", "actors.conversation"]}, env, logs) as children:
        bus = await Bus.connect(bus_config)
        executor = ExecutorActor(
            bus_config,
            ExecutorConfig(database_url=servers.postgres.uri("postgres"), offline=True),
            model_override=replying(lambda messages, info: REPLY),
        )
        await executor.start()
        try:
            await services_up(bus.nc, "conversation")
            sub = await bus.nc.subscribe(subjects.executor_commands(), cb=on_request)
            conversation_id = new_id()
            service = subjects.service(subjects.ActorName.CONVERSATION, "create")
            trace = Trace(tenant=TENANT)
            create = CreateConversation(conversation_id=conversation_id)
            await bus.request(service, create, ConversationView, trace=trace)
            pid = children["conversation"].pid
            cpu_before = cpu_seconds(pid)
            seq = 0
            for _ in range(turns):
                seq = await turn(bus, conversation_id, after_seq=seq)
            cpu = cpu_seconds(pid) - cpu_before
            await sub.unsubscribe()
        finally:
            await executor.stop()
            await bus.close()
    last_size, last = sizes[-1]
    history = last.history_ref.size if last.history_ref is not None else len(bytes(last.history))
    return Figures(mode, turns, last_size, max(s for s, _ in sizes), history, 1000 * cpu / turns)


async def turn(bus: Bus, conversation_id: str, *, after_seq: int = 0) -> int:
    """One turn, waited for: the stream sequence of its TurnCompleted (the next turn's `after_seq`, so
    finding a turn's end does not replay every earlier one)."""
    run_id = new_id()
    message = PostMessage(
        conversation_id=conversation_id, message_id=f"m-{run_id}", run_id=run_id, content=PROMPT, stream=False
    )
    trace = Trace(tenant=TENANT)
    await bus.publish(subjects.conversation_command(TENANT, conversation_id), message, trace=trace, msg_id=run_id)
    subject = subjects.conversation_event(TENANT, conversation_id, "turn")
    async with asyncio.timeout(30):
        async for env in bus.replay(CONVERSATION_EVT.name, subject, TurnCompleted | TurnFailed, after_seq=after_seq):
            if env.body.run_id == run_id:
                assert isinstance(env.body, TurnCompleted), env.body
                return env.seq
    raise AssertionError("unreachable")


async def run(servers: Infra, logs: Path, scale: Scale, report: Report) -> None:
    """`make bench` / `make bench-smoke`: the same two modes, reported as a table."""
    turns = 10 if scale.smoke else 200
    results = [
        await one_mode(servers, logs, "inline (before)", 2**40, turns),
        await one_mode(servers, logs, "by reference past 64 KiB (after)", 64 * 1024, turns),
    ]
    report.table(
        f"{turns}-turn conversation, ~{len(PROMPT) + len(REPLY)} bytes of prompt + reply a turn",
        ("mode", "last RunRequest bytes", "largest RunRequest bytes", "last history bytes", "conversation CPU ms/turn"),
        [
            (f.mode, f.last_request_bytes, f.max_request_bytes, f.history_bytes, f"{f.cpu_ms_per_turn:.2f}")
            for f in results
        ],
    )


async def main(turns: int) -> None:
    with infra() as servers, tempfile.TemporaryDirectory(prefix="agentbus-bench-history-") as tmp:
        results = [
            await one_mode(servers, Path(tmp), "inline (before)", 2**40, turns),
            await one_mode(servers, Path(tmp), "by reference past 64 KiB (after)", 64 * 1024, turns),
        ]
    print(f"\n{turns}-turn conversation, ~{len(PROMPT) + len(REPLY)} bytes of prompt + reply a turn")
    print("| mode | last RunRequest bytes | largest RunRequest bytes | last history bytes | conversation CPU ms/turn |")
    print("|---|---|---|---|---|")
    for f in results:
        print(
            f"| {f.mode} | {f.last_request_bytes} | {f.max_request_bytes} | {f.history_bytes} "
            f"| {f.cpu_ms_per_turn:.2f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="10 turns: check that it runs and prints figures")
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args()
    uvloop.run(main(10 if args.smoke else args.turns))
