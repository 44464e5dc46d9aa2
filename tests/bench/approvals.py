"""Approvals benchmark: a delegated run whose one tool call needs approval, against an executor process.

Each run is published, parks (RunWaiting on its output), and is approved over the bus
(`decide_approval`). Measured from the decision: the time until the resumed run's tool result is on its
output (resuming a parked run: the park read, the run marked running, the agent going on from the
stored messages), and until its end (the approval round trip: approve -> tool runs -> next model
request -> end recorded). Beside it, in the same run, the same two-step run with no approval from
publish to end: what the platform takes for the part after the park, when nothing waits.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from bus import subjects
from bus.client import Bus
from bus.codec import decode_union
from bus.headers import Trace, new_id
from schemas.approvals import ApprovalList, ApprovalView, DecideApproval, Decision, ListApprovals, RunWaiting
from schemas.runs import TERMINAL_OUTPUTS, RunCompleted, RunOutput, RunRequest, ToolReturned
from tests.bench.harness import LATENCY, Infra, Latency, Report, Scale, processes

TENANT = "bench-approvals"
AGENTS = """
[agents.approver]
model = "function:tests.bench.models:one_tool_streamed"
tools = ["current_time"]
requires_approval = ["current_time"]

[agents.plain]
model = "function:tests.bench.models:one_tool_streamed"
tools = ["current_time"]
"""


async def _cycle(bus: Bus, agent: str) -> tuple[float, float, float]:
    """One run of `agent`: (seconds to park or, without approval, 0), (decision -> resumed tool result),
    (decision -> end; for `plain`: publish -> end)."""
    run_id, trace = new_id(), Trace(tenant=TENANT)
    sub = await bus.nc.subscribe(subjects.run_output(TENANT, run_id))
    started = time.perf_counter()
    request = RunRequest(run_id=run_id, agent=agent, prompt="what time is it?")
    await bus.publish(subjects.executor_command(TENANT, run_id), request, trace=trace, msg_id=run_id)
    decided = resumed = ended = 0.0
    parked = started
    try:
        async with asyncio.timeout(30):
            async for msg in sub.messages:
                event = decode_union(msg.data, RunOutput)
                if isinstance(event, RunWaiting):
                    parked = decided = time.perf_counter()
                    decision = DecideApproval(
                        approval_id=event.approvals[0].id, decision=Decision.APPROVE, decided_by="bench"
                    )
                    service = subjects.service(subjects.ActorName.EXECUTOR, "decide_approval")
                    await bus.request(service, decision, ApprovalView, trace=trace)
                elif isinstance(event, ToolReturned) and decided:
                    resumed = time.perf_counter()
                elif isinstance(event, TERMINAL_OUTPUTS):
                    assert isinstance(event, RunCompleted), event
                    ended = time.perf_counter()
                    break
    finally:
        await sub.unsubscribe()
    if not decided:
        return 0.0, 0.0, ended - started
    return parked - started, resumed - decided, ended - decided


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    agents = logs / "approvals-agents.toml"
    agents.write_text(AGENTS)
    env = infra.env(AGENTBUS_AGENTS_FILE=str(agents), AGENTBUS_ACTORS="executor", AGENTBUS_METRICS_PORT="0")
    bus = await Bus.connect(infra.bus_config())
    try:
        with report.phase("executor"), processes({"executor": ["-m", "actors.executor"]}, env, logs) as children:
            await _ready(bus, children)
            n = max(scale.turns_c1 // 4, 5)
            for _ in range(scale.warmup // 4 + 2):
                await _cycle(bus, "approver")
                await _cycle(bus, "plain")
            park, resume, trip, plain = [], [], [], []
            wall = time.perf_counter()
            for _ in range(n):
                p, r, t = await _cycle(bus, "approver")
                park.append(p)
                resume.append(r)
                trip.append(t)
                plain.append((await _cycle(bus, "plain"))[2])
            wall = time.perf_counter() - wall
    finally:
        await bus.close()
    to_park, resumed, round_trip = Latency(tuple(park), wall), Latency(tuple(resume), wall), Latency(tuple(trip), wall)
    whole = Latency(tuple(plain), wall)
    rows: list[tuple[object, ...]] = [
        ("publish -> parked (RunWaiting on the output)", *to_park.cells(), ""),
        ("resume: approve -> the tool's result on the output", *resumed.cells(), ""),
        ("round trip: approve -> tool -> next model request -> end", *round_trip.cells(),
         f"x{round_trip.p50_ms / whole.p50_ms:.2f} of the plain run"),
        ("the same run with no approval: publish -> end", *whole.cells(), ""),
    ]  # fmt: skip
    report.table(f"a run whose one tool call needs approval, c=1, {n} runs (ms)", ("path", *LATENCY, "ratio"), rows)
    report.target("approval round trip p50 (approve -> end)", f"{round_trip.p50_ms:.1f} ms", "reported", None)
    report.target("time to resume a parked run p50", f"{resumed.p50_ms:.1f} ms", "reported", None)


async def _ready(bus: Bus, children: dict[str, subprocess.Popen[bytes]]) -> None:
    """Until the executor answers its service (it has started and migrated)."""
    deadline = time.monotonic() + 60
    while True:
        if any(child.poll() is not None for child in children.values()):
            raise RuntimeError("the executor exited: see its log")
        try:
            service = subjects.service(subjects.ActorName.EXECUTOR, "list_approvals")
            await bus.request(service, ListApprovals(), ApprovalList, trace=Trace(tenant=TENANT), timeout=2)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
