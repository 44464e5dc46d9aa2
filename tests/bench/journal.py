"""Journal benchmark: the steps re-executed after `kill -9` of the executor mid-run (target 0).

The run of tests/test_journal.py (model -> two lookups in parallel -> model -> charge, side-effecting ->
model), one per place to kill it: each stops for good at its place in a first executor process, which is
killed with SIGKILL once every run got there; a second executor finishes them. Counted from the lines the
model and tools append to a file: the finished steps made again (the figure the journal keeps at 0), the
step cut off (made again once, except `charge`, which is reported to the model instead of repeated), and
the time from starting the second executor to every run's end.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

from bus import subjects
from bus.client import Bus
from bus.headers import Trace, new_id
from bus.streams import RUN_OUT
from schemas.runs import TERMINAL_OUTPUTS, RunCompleted, RunOutput, RunRequest
from tests.bench.harness import Infra, Report, Scale, processes
from tests.test_journal import AGENTS_TOML, STOPS

TENANT = "bench-journal"
STEPS = ["model1", "lookup1", "lookup2", "model2", "charge", "model3"]


async def _end(bus: Bus, run_id: str) -> object:
    async with asyncio.timeout(120):
        async for env in bus.replay(RUN_OUT.name, subjects.run_output(TENANT, run_id), RunOutput):
            if isinstance(env.body, TERMINAL_OUTPUTS):
                return env.body
    raise AssertionError("unreachable")


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    agents, calls = logs / "journal-agents.toml", logs / "journal-calls.log"
    agents.write_text(AGENTS_TOML)
    calls.write_text("")
    env = infra.env(
        AGENTBUS_MODEL="function:tests.test_journal:journaled",
        AGENTBUS_AGENTS_FILE=str(agents),
        AGENTBUS_TEST_CALLS=str(calls),
        AGENTBUS_METRICS_PORT="0",
    )
    executor = {"executor": ["-m", "actors.executor"]}
    bus = await Bus.connect(infra.bus_config())
    runs: dict[str, str] = {}
    try:
        with report.phase("first executor"), processes(executor, {**env, "AGENTBUS_TEST_STOP": "1"}, logs) as first:
            for tag, streamed in STOPS.items():
                run_id = runs[tag] = new_id()
                request = RunRequest(run_id=run_id, agent="worker", prompt=tag, stream=streamed)
                await bus.publish(
                    subjects.executor_command(TENANT, run_id), request, trace=Trace(tenant=TENANT), msg_id=run_id
                )
            deadline = time.monotonic() + 120
            while {line.split()[0] for line in calls.read_text().splitlines() if line.endswith(" stopped")} != set(
                STOPS
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("the runs did not all reach their places")
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # lookup 1 beside the stopped lookup 2 finishes and is journaled
            first["executor"].send_signal(signal.SIGKILL)
            first["executor"].wait()
        with report.phase("second executor"), processes(executor, env, logs):
            started = time.perf_counter()
            ends = {tag: await _end(bus, run_id) for tag, run_id in runs.items()}
            recovered = time.perf_counter() - started
    finally:
        await bus.close()
    made = Counter(line for line in calls.read_text().splitlines() if not line.endswith(" stopped"))
    rows: list[tuple[object, ...]] = []
    finished_again = 0
    for tag in STOPS:
        cut = {"lookup": "lookup2"}.get(tag, tag)
        again = {step: made[f"{tag} {step}"] - 1 for step in STEPS}
        redone_finished = sum(n for step, n in again.items() if step != cut)
        finished_again += redone_finished
        completed = isinstance(ends[tag], RunCompleted)
        rows.append(
            (f"killed during {cut}", redone_finished, again[cut], "completed" if completed else "NOT completed")
        )
    report.table(
        f"kill -9 of the executor mid-run, {len(STOPS)} runs (second executor finished all in {recovered:.1f} s)",
        ("where", "finished steps made again", "the cut-off step made again", "end"),
        rows,
    )
    report.target("steps re-executed after kill -9 mid-run", str(finished_again), "0", finished_again == 0)
