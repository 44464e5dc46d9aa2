"""Per-turn latency at turn 10 and at turn 1,000 of one conversation: flat with a context budget
(the model is sent a stored summary and the recent turns), against the history sent whole.

`python -m tests.bench long_conversation [--smoke]` (smoke: turns 10 and 60). As in tests/bench/history.py
(whose turn it reuses): the conversation actor is its own process, the executor runs in this
process with a FunctionModel answering ~500 bytes a turn (and ~500 bytes as the summarizer); turns
are not streamed, sent one after another, each timed from its command to its TurnCompleted. A
figure is the median of the 10 turns around it (a turn that summarizes is among them now and then).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from nats.aio.msg import Msg

from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from bus import subjects
from bus.client import Bus
from bus.codec import decode_union
from bus.headers import Trace, new_id
from bus.logging import configure_logging
from schemas.conversation import ConversationView, CreateConversation, PostMessage, TurnCompleted, TurnFailed
from tests.bench.harness import CpuMeter, Infra, Report, Scale, processes, services_up
from tests.bench.history import PROMPT, REPLY, TENANT
from tests.models import replying

BUDGET_TOKENS = 4_000  # ~240 tokens a turn: a summary every dozen turns or so
AGENTS = f"""
[agents.assistant.context]
budget_tokens = {BUDGET_TOKENS}
"""
WINDOW = 10
WARMUP = 20


@dataclass(frozen=True)
class Figures:
    mode: str
    early_ms: float  # median latency of the turns around `early`
    late_ms: float
    early_cpu_ms: float  # CPU per turn of every process on the path (what a loaded machine does not blur)
    late_cpu_ms: float

    @property
    def ratio(self) -> float:
        return self.late_ms / self.early_ms

    @property
    def cpu_ratio(self) -> float:
        return self.late_cpu_ms / self.early_cpu_ms


@dataclass
class Conversation:
    """One conversation whose turn events this client hears live (one core subscription, not a
    JetStream consumer per turn: a thousand of those in a minute pass the server's limit)."""

    bus: Bus
    id: str
    ended: asyncio.Queue[TurnCompleted | TurnFailed]

    @classmethod
    async def start(cls, bus: Bus) -> Conversation:
        conversation_id = new_id()
        service = subjects.service(subjects.ActorName.CONVERSATION, "create")
        create = CreateConversation(conversation_id=conversation_id)
        await bus.request(service, create, ConversationView, trace=Trace(TENANT))
        ended: asyncio.Queue[TurnCompleted | TurnFailed] = asyncio.Queue()

        async def on_event(msg: Msg) -> None:
            ended.put_nowait(decode_union(msg.data, TurnCompleted | TurnFailed))

        await bus.nc.subscribe(subjects.conversation_event(TENANT, conversation_id, "turn"), cb=on_event)
        await bus.barrier()
        return cls(bus, conversation_id, ended)

    async def turn(self) -> None:
        run_id = new_id()
        message = PostMessage(
            conversation_id=self.id, message_id=f"m-{run_id}", run_id=run_id, content=PROMPT, stream=False
        )
        subject = subjects.conversation_command(TENANT, self.id)
        await self.bus.publish(subject, message, trace=Trace(tenant=TENANT), msg_id=run_id)
        async with asyncio.timeout(30):
            while (event := await self.ended.get()).run_id != run_id:
                pass
        assert isinstance(event, TurnCompleted), event


async def one_mode(servers: Infra, logs: Path, mode: str, agents: Path | None, early: int, late: int) -> Figures:
    bus_config = servers.bus_config()
    latencies: list[float] = []
    cpu: dict[int, float] = {}
    with processes({"conversation": ["-m", "actors.conversation"]}, servers.env(), logs) as children:
        meter = CpuMeter.of(servers, {"conversation": children["conversation"].pid})
        bus = await Bus.connect(bus_config)
        executor = ExecutorActor(
            bus_config,
            ExecutorConfig(database_url=servers.postgres.uri("postgres"), offline=True, agents_file=agents),
            model_override=replying(lambda messages, info: REPLY),
        )
        await executor.start()
        try:
            await services_up(bus.nc, "conversation")
            warm_up = await Conversation.start(bus)  # the processes' first turns are not the conversation's
            for _ in range(WARMUP):
                await warm_up.turn()
            measured = await Conversation.start(bus)
            for n in range(1, late + WINDOW // 2 + 1):
                if n in (early - WINDOW // 2, late - WINDOW // 2):
                    meter.start()
                started = time.perf_counter()
                await measured.turn()
                latencies.append(time.perf_counter() - started)
                if n in (early + WINDOW // 2 - 1, late + WINDOW // 2 - 1):
                    meter.stop()
                    cpu[n + 1 - WINDOW // 2] = meter.per_unit_ms(WINDOW)
        finally:
            await executor.stop()
            await bus.close()

    def around(n: int) -> float:  # turn n is latencies[n - 1]
        return 1000 * statistics.median(latencies[n - 1 - WINDOW // 2 : n - 1 + WINDOW // 2])

    return Figures(mode, around(early), around(late), cpu[early], cpu[late])


async def run(servers: Infra, logs: Path, scale: Scale, report: Report) -> None:
    """`make bench` / `make bench-smoke`: both modes, one table, and the budget's ratio in the summary."""
    early, late = (10, 60) if scale.smoke else (10, 1_000)
    configure_logging("bench", level="WARNING")  # the executor runs here: its per-message lines are not measured
    agents = logs / "long-conversation-agents.toml"
    agents.write_text(AGENTS)
    with report.phase(f"context budget of {BUDGET_TOKENS} tokens"):
        budget = await one_mode(servers, logs, f"context budget {BUDGET_TOKENS} tokens", agents, early, late)
    with report.phase("no budget"):
        whole = await one_mode(servers, logs, "no budget (history sent whole)", None, early, late)
    report.table(
        f"one conversation, ~{len(PROMPT) + len(REPLY)} bytes of prompt + reply a turn: the {WINDOW} turns "
        f"around turn {early} and turn {late}, median latency and CPU per turn (every process on the path)",
        (
            "mode",
            f"turn {early} ms",
            f"turn {late} ms",
            "latency ratio",
            f"turn {early} CPU ms",
            f"turn {late} CPU ms",
            "CPU ratio",
        ),
        [
            (
                f.mode,
                f"{f.early_ms:.2f}",
                f"{f.late_ms:.2f}",
                f"{f.ratio:.2f}",
                f"{f.early_cpu_ms:.2f}",
                f"{f.late_cpu_ms:.2f}",
                f"{f.cpu_ratio:.2f}",
            )
            for f in (budget, whole)
        ],
    )
    report.target(
        f"chat turn at turn {late} / turn {early}, context budget (latency; CPU decides)",
        f"{budget.ratio:.2f}x ({budget.early_ms:.1f} -> {budget.late_ms:.1f} ms); CPU {budget.cpu_ratio:.2f}x",
        "flat: CPU <= 1.5x",
        budget.cpu_ratio <= 1.5,
    )
