"""Pipelines: a named composition of agents run as one run whose steps are sub-runs.

`sequential`: each step gets the text and the results of the steps before it; `parallel`: every
step gets the text at once, and the results are merged. Each step is its own executor run under
the pipeline's run (visible in the run tree, with its own usage and timing), with the id
`<pipeline run>-step<n>`: a pipeline run redelivered after a crash finds its steps' runs (ended, or
still running) instead of starting them again. A pipeline runs as agent `pipeline:<name>`, so
anything that can start an agent run (a chat turn, a task) can run one.

Built in: `text-analysis` = summarizer, sentiment (label + score), entities (typed entities).
Declare more in the agents file:

```toml
[pipelines.triage]
steps = ["summarizer", "support"]
mode = "sequential"
```
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import msgspec

from actors.executor.agents import AgentSpec, Runner
from actors.executor.costs import combined
from schemas.errors import ErrorCode, ErrorReply
from schemas.runs import (
    STATUS_OF_END,
    PipelineMode,
    PipelineOutput,
    PipelineStep,
    RunCompleted,
    RunEnd,
    RunFailed,
    RunRequest,
    RunStatus,
    Usage,
)

__all__ = ["BUILT_IN_AGENTS", "PIPELINE_PREFIX", "PipelineSpec", "load_pipelines", "run_pipeline", "step_run_id"]

PIPELINE_PREFIX = "pipeline:"
RunStep = Callable[[RunRequest], Awaitable[RunEnd]]  # start a step's run and wait for its end


class PipelineSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: list[str]
    mode: PipelineMode = PipelineMode.SEQUENTIAL
    description: str = ""


class PipelinesFile(msgspec.Struct, frozen=True):
    pipelines: dict[str, PipelineSpec] = {}


BUILT_IN_AGENTS = {
    "summarizer": AgentSpec(
        instructions="Summarize the text you are given in two or three sentences.",
    ),
    "sentiment": AgentSpec(
        instructions="Classify the overall sentiment of the text you are given.",
        output={
            "type": "object",
            "title": "sentiment",
            "properties": {
                "label": {"type": "string", "enum": ["positive", "neutral", "negative"]},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["label", "score"],
        },
    ),
    "entities": AgentSpec(
        instructions="List the named entities in the text you are given.",
        output={
            "type": "object",
            "title": "entities",
            "properties": {
                "entities": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "type": {"type": "string", "enum": ["person", "organization", "place", "date", "other"]},
                        },
                        "required": ["name", "type"],
                    },
                }
            },
            "required": ["entities"],
        },
    ),
}

BUILT_IN = {
    "text-analysis": PipelineSpec(
        steps=["summarizer", "sentiment", "entities"],
        mode=PipelineMode.PARALLEL,
        description="summary, sentiment (label and score) and named entities of a text",
    )
}


def load_pipelines(path: Path | None) -> dict[str, PipelineSpec]:
    pipelines = dict(BUILT_IN)
    if path is not None:
        data = tomllib.loads(path.read_text())
        pipelines |= msgspec.convert({"pipelines": data.get("pipelines", {})}, PipelinesFile).pipelines
    return pipelines


def step_run_id(pipeline_run_id: str, n: int) -> str:
    """The run id of step `n` (from 1): the same on every delivery of the pipeline's run."""
    return f"{pipeline_run_id}-step{n}"


async def run_pipeline(
    name: str, spec: PipelineSpec, req: RunRequest, *, depth: int, runners: Mapping[str, Runner], run_step: RunStep
) -> tuple[RunEnd, Usage]:
    """Run each step as a sub-run of `req` (at `depth`), one after another or all at once; the pipeline's end."""
    missing = [a for a in spec.steps if a not in runners]
    if missing:
        return _failed(req, ErrorCode.INVALID, f"the pipeline names unknown agents: {missing}"), Usage()
    try:
        mode = PipelineMode(req.metadata.get("mode") or spec.mode)
    except ValueError:
        return _failed(req, ErrorCode.INVALID, f"unknown pipeline mode {req.metadata['mode']!r}"), Usage()

    async def step(n: int, agent: str, prompt: str) -> PipelineStep:
        child = RunRequest(
            run_id=step_run_id(req.run_id, n),
            agent=agent,
            prompt=prompt,
            parent_run_id=req.run_id,
            metadata={"depth": str(depth + 1)},
            wait_for_model=req.wait_for_model,
        )
        started = time.perf_counter()
        end = await run_step(child)
        return _step_result(agent, child.run_id, end, runners[agent].structured, time.perf_counter() - started)

    if mode is PipelineMode.PARALLEL:
        steps = list(await asyncio.gather(*(step(n, a, req.prompt) for n, a in enumerate(spec.steps, 1))))
    else:
        steps = []
        for n, agent in enumerate(spec.steps, 1):
            steps.append(await step(n, agent, _with_earlier(req.prompt, steps)))
    return _end(req, PipelineOutput(pipeline=name, mode=mode, steps=steps))


def _with_earlier(prompt: str, done: list[PipelineStep]) -> str:
    if not done:
        return prompt
    earlier = json.dumps([{"agent": s.agent, "output": s.output} for s in done], default=str)
    return f"{prompt}\n\nResults of the earlier steps (JSON):\n{earlier}"


def _step_result(agent: str, run_id: str, end: RunEnd, structured: bool, seconds: float) -> PipelineStep:
    output: object = None
    if isinstance(end, RunCompleted):
        output = end.output
        if structured:
            with contextlib.suppress(ValueError):
                output = json.loads(end.output)
    return PipelineStep(
        agent=agent,
        run_id=run_id,
        status=STATUS_OF_END[type(end)],
        output=output,
        error=end.error.message if isinstance(end, RunFailed) else None,
        usage=end.usage if isinstance(end, RunCompleted) else Usage(),
        ms=round(seconds * 1000, 1),
        error_code=end.error.code if isinstance(end, RunFailed) else None,
        error_details=end.error.details if isinstance(end, RunFailed) else {},
    )


def _end(req: RunRequest, result: PipelineOutput) -> tuple[RunEnd, Usage]:
    """The pipeline's end, answering its steps' usage summed, and its run's own usage: none (its steps'
    runs record theirs, so a rollup counts them once)."""
    steps = result.steps
    usage = combined(s.usage for s in steps)
    output = msgspec.json.encode(result).decode()
    failed = [s for s in steps if s.status is not RunStatus.COMPLETED]
    if failed:
        # a step refused for its tenant (budget spent, say) fails the pipeline the same way; else it is unavailable
        refused = next((s for s in failed if s.error_code in TENANT_REFUSALS), None)
        error = ErrorReply(
            code=refused.error_code if refused and refused.error_code else ErrorCode.UNAVAILABLE,
            message=f"pipeline steps failed: {', '.join(s.agent for s in failed)}",
            details={**(refused.error_details if refused else {}), "result": output},
        )
        return RunFailed(run_id=req.run_id, error=error), Usage()
    return RunCompleted(run_id=req.run_id, output=output, usage=usage, model="pipeline"), Usage()


TENANT_REFUSALS = (ErrorCode.BUDGET_EXCEEDED, ErrorCode.FORBIDDEN)


def _failed(req: RunRequest, code: ErrorCode, message: str) -> RunFailed:
    return RunFailed(run_id=req.run_id, error=ErrorReply(code=code, message=message))
