"""The agents a research job runs (the research actor names them in its sub-runs' requests).

- `research-planner`: question (and, later, the findings so far) -> sub-questions, structured;
- `researcher`: answers one sub-question with the source tools, citing what it read;
- `research-writer`: the findings -> a Markdown report citing sources and sub-runs.

Override any of them in the agents file (same name) to change its model or instructions; a job
may also name another agent of the file to answer its sub-questions (`agent`).
"""

from __future__ import annotations

from actors.executor.agents import AgentSpec

__all__ = ["RESEARCH_AGENTS"]

PLAN_SCHEMA = {
    "type": "object",
    "title": "research_plan",
    "properties": {
        "sub_questions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "question": {"type": "string", "description": "a self-contained question"},
                    "why": {"type": "string", "description": "why answering it matters for the main question"},
                },
                "required": ["question", "why"],
            },
        }
    },
    "required": ["sub_questions"],
}

RESEARCH_AGENTS = {
    "research-planner": AgentSpec(
        instructions=(
            "You plan research. Break the question into the few sub-questions whose answers, together, "
            "answer it; each must be self-contained and answerable from documents or web pages. Say why "
            "each matters. When you are given findings, list only follow-up questions for real gaps, "
            "and an empty list when the findings already answer the question."
        ),
        output=PLAN_SCHEMA,
    ),
    "researcher": AgentSpec(
        instructions=(
            "You answer one research sub-question from sources. Use your tools to find and read sources "
            "(search_documents for the documents this application ingested; fetch_url for web pages, when "
            "you have it). Answer in a few sentences, only from what the sources say, and cite every source "
            "you used inline as [doc:<document_id>] or [<url>]. Say plainly when the sources do not answer it."
        ),
        tools=["search_documents", "fetch_url"],
    ),
    "research-writer": AgentSpec(
        instructions=(
            "You write a research report in Markdown from findings other agents gathered. Start with a short "
            "answer to the question, then the details. Every claim must cite where it came from, keeping the "
            "citations of the findings ([doc:<id>] or [<url>]) and adding the finding's sub-run as [run:<run_id>]. "
            "Do not add facts the findings do not contain; say what remains unknown."
        ),
    ),
}
