"""Pipelines: a named composition of agents run as one run whose steps are sub-runs.

`sequential`: each step gets the text and the results of the steps before it; `parallel`: every
step gets the text at once, and the results are merged. Each step is its own executor run under
the pipeline's run (visible in the run tree, with its own usage and timing). A pipeline runs as
agent `pipeline:<name>`, so anything that can start an agent run (a chat turn, a task) can run one.

Built in: `text-analysis` = summarizer, sentiment (label + score), entities (typed entities).
Declare more in the agents file:

```toml
[pipelines.triage]
steps = ["summarizer", "support"]
mode = "sequential"
```
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from actors.executor.agents import AgentSpec

__all__ = ["BUILT_IN_AGENTS", "PIPELINE_PREFIX", "PipelineSpec", "load_pipelines"]

PIPELINE_PREFIX = "pipeline:"
Mode = Literal["sequential", "parallel"]


class PipelineSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: list[str]
    mode: Mode = "sequential"
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
        mode="parallel",
        description="summary, sentiment (label and score) and named entities of a text",
    )
}


def load_pipelines(path: Path | None) -> dict[str, PipelineSpec]:
    pipelines = dict(BUILT_IN)
    if path is not None:
        data = tomllib.loads(path.read_text())
        pipelines |= msgspec.convert({"pipelines": data.get("pipelines", {})}, PipelinesFile).pipelines
    return pipelines
