"""Research-job benchmark: a job of 20 sub-questions on a model that takes exactly 200 ms a request.

HTTP POST /v1/research -> gateway -> research actor (plan, fan out, follow-up, write) -> executor
(tests.bench.models:research) -> back; done when the job's SSE stream says research_finished.

The ideal is the model's own critical path: the plan, ceil(20 / concurrency) rounds of sub-questions
and the writer, 200 ms each (no follow-up: the plan's 20 sub-questions use all of max_subtasks, so the
actor asks for none; one would be a step of its own). Everything above it is the platform's: per
sub-run (finished_at - started_at - 200 ms, as the actor records them) and per job, step by step.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bus import keys
from bus.client import Bus
from tests.bench.harness import LATENCY, Infra, Latency, Report, Scale, free_port, processes, wait_http
from tests.bench.models import RESEARCH_LATENCY_S, RESEARCH_QUESTIONS

TENANT = "bench"
MODEL = "function:tests.bench.models:research"
QUESTION = "How do the parts of a research platform add up to its latency?"


def _t(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def _one_job(client: httpx.AsyncClient) -> tuple[float, float, dict[str, Any]]:
    """(wall clock at the POST, seconds from the POST to research_finished on the SSE stream, the job)."""
    posted, start = time.time(), time.perf_counter()
    r = await client.post(
        "/v1/research", json={"question": QUESTION, "max_subtasks": RESEARCH_QUESTIONS, "max_depth": 2}
    )
    r.raise_for_status()
    job_id = r.json()["id"]
    async with client.stream("GET", f"/v1/research/{job_id}/events") as events:
        events.raise_for_status()
        async for line in events.aiter_lines():
            if line == "event: research_finished":
                break
    wall = time.perf_counter() - start
    job = (await client.get(f"/v1/research/{job_id}")).json()
    kinds = sorted((s["kind"], s["depth"]) for s in job["subruns"] if s["kind"] != "follow_up")
    expected = sorted([("plan", 0), *[("question", 1)] * RESEARCH_QUESTIONS, ("report", 0)])
    if job["status"] != "completed" or kinds != expected or any(s["status"] != "completed" for s in job["subruns"]):
        raise RuntimeError(f"research job {job_id} ended {job['status']} with sub-runs {kinds}: {job.get('error')}")
    return posted, wall, job


STEPS = (("plan", "plan"), ("question", "questions"), ("follow_up", "follow-up"), ("report", "writer"))


def _steps(job: dict[str, Any], concurrency: int) -> list[tuple[str, float, float, int]]:
    """The job's critical path, step by step: (step, first start, last end, model requests end to end).

    The sub-questions take ceil(n / concurrency) requests end to end; the follow-up is a step only
    where the job ran one (it does not when the plan already used all of max_subtasks)."""
    steps = []
    for kind, label in STEPS:
        runs = [s for s in job["subruns"] if s["kind"] == kind]
        if runs:
            start = min(_t(s["started_at"]) for s in runs)
            end = max(_t(s["finished_at"]) for s in runs)
            steps.append((label, start, end, math.ceil(len(runs) / concurrency)))
    return steps


def _ideal_s(job: dict[str, Any], concurrency: int) -> float:
    return sum(requests for *_, requests in _steps(job, concurrency)) * RESEARCH_LATENCY_S


def _segments(posted: float, wall: float, job: dict[str, Any], concurrency: int) -> dict[str, float]:
    """Where a job's time above its ideal went (s), along its critical path: they add up to wall - ideal
    (but for the "of which" line, a part of the line above it)."""
    steps = _steps(job, concurrency)
    out = {"POST -> plan started": steps[0][1] - posted}
    previous: tuple[str, float, float, int] | None = None
    for step in steps:
        label, start, end, requests = step
        if previous is not None:
            out[f"{previous[0]} finished -> {label} started"] = start - previous[2]
        out[f"{label}: first start -> last end, less its model time"] = end - start - requests * RESEARCH_LATENCY_S
        if label == "questions":
            starts = [_t(s["started_at"]) for s in job["subruns"] if s["kind"] == "question"]
            out["  of which: first -> last question started"] = max(starts) - min(starts)
        previous = step
    out["writer finished -> job finished_at"] = _t(job["finished_at"]) - steps[-1][2]
    out["job finished_at -> research_finished at the client"] = posted + wall - _t(job["finished_at"])
    return out


class Result:
    def __init__(self, concurrency: int, runs: list[tuple[float, float, dict[str, Any]]]) -> None:
        self.concurrency = concurrency
        ideals = {_ideal_s(job, concurrency) for _, _, job in runs}
        if len(ideals) != 1:
            raise RuntimeError(f"the jobs at concurrency {concurrency} took different paths: ideals {ideals}")
        self.ideal_s = ideals.pop()
        self.follow_ups = sum(1 for _, _, job in runs for s in job["subruns"] if s["kind"] == "follow_up")
        self.wall = Latency(tuple(w for _, w, _ in runs), sum(w for _, w, _ in runs))
        self.subrun_overhead = Latency(
            tuple(
                _t(s["finished_at"]) - _t(s["started_at"]) - RESEARCH_LATENCY_S
                for _, _, job in runs
                for s in job["subruns"]
            ),
            1.0,
        )
        self.segments = [_segments(posted, wall, job, concurrency) for posted, wall, job in runs]

    def segment_p50_ms(self, name: str) -> str:
        values = sorted(s[name] for s in self.segments if name in s)
        return f"{values[len(values) // 2] * 1000:.1f}" if values else "-"


async def _jobs(client: httpx.AsyncClient, concurrency: int, total: int, *, warmup: bool) -> Result:
    if warmup:
        await asyncio.wait_for(_one_job(client), 60)
    return Result(concurrency, [await asyncio.wait_for(_one_job(client), 60) for _ in range(total)])


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    port = free_port()
    env = infra.env(
        AGENTBUS_MODEL=MODEL,
        AGENTBUS_PORT=str(port),
        AGENTBUS_ACTORS="executor,research",
        AGENTBUS_MAX_RUNS="32",  # >= the 20 sub-questions running at once
    )
    bus = await Bus.connect(infra.bus_config())
    key = await keys.create_key(bus, tenant=TENANT, name="bench-research")
    await bus.close()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    platform = {"executor": ["-m", "actors.executor"], "gateway": ["-m", "gateway"]}
    results: list[Result] = []
    with processes(platform, env, logs) as children:
        for concurrency, total in ((RESEARCH_QUESTIONS, scale.research_jobs), (4, scale.research_jobs_small)):
            research_env = {**env, "AGENTBUS_RESEARCH_CONCURRENCY": str(concurrency)}
            with processes({f"research-c{concurrency}": ["-m", "actors.research"]}, research_env, logs) as actor:
                await wait_http(f"{base}/health", timeout=90, children=children | actor)
                async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
                    results.append(await _jobs(client, concurrency, total, warmup=not scale.smoke))

    latency_ms = RESEARCH_LATENCY_S * 1000
    rows: list[tuple[object, ...]] = []
    for r in results:
        ideal_ms = r.ideal_s * 1000
        rows.append(
            (
                f"{r.concurrency} ({len(r.wall.samples)} jobs, {r.follow_ups} follow-ups)",
                *r.wall.cells(0),
                f"{ideal_ms:.0f} ({round(r.ideal_s / RESEARCH_LATENCY_S)} x {latency_ms:.0f})",
                f"x{r.wall.p50_ms / ideal_ms:.2f}",
                f"{r.wall.p50_ms - ideal_ms:.0f}",
                " / ".join(r.subrun_overhead.cells(1)),
            )
        )
    report.table(
        f"research job: {RESEARCH_QUESTIONS} sub-questions, max_depth 2, model latency {latency_ms:.0f} ms (ms)",
        (
            "sub-questions at once",
            *(f"wall {q}" for q in LATENCY),
            "ideal",
            "wall / ideal",
            "overhead (wall - ideal)",
            "per sub-run overhead " + " / ".join(LATENCY),
        ),
        rows,
    )
    names = list(dict.fromkeys(name for r in results for segments in r.segments for name in segments))
    report.table(
        "where the overhead goes: p50 per job along the critical path (ms; the segments add up to wall - ideal)",
        ("segment", *(f"concurrency {r.concurrency}" for r in results)),
        [(name, *(r.segment_p50_ms(name) for r in results)) for name in names],
    )
