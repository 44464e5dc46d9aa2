"""What a research job says to its agents and makes of their answers: prompts, the plan, the sources a
sub-run read, the report's citations, and the report the actor writes itself when a limit ends the job."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelRequest, ToolReturnPart

from schemas.research import Citation, Source, StopReason, SubQuestion, Subrun, SubrunKind
from schemas.tools import UNTRUSTED_KEY

__all__ = [
    "citations",
    "findings",
    "follow_up_prompt",
    "partial_report",
    "plan_prompt",
    "questions_of",
    "sources_of",
    "with_sources",
    "writer_prompt",
]

STOPPED = {
    StopReason.MAX_SUBRUNS: "it reached its limit on sub-runs (max_subruns)",
    StopReason.MAX_TOKENS: "it used its token budget (max_tokens)",
    StopReason.MAX_COST: (
        "it used its cost budget (max_cost_usd), or a sub-run's cost could not be priced,"
        " so the budget could no longer be kept"
    ),
    StopReason.DEADLINE: "it ran out of time (deadline_seconds)",
}
BRACKETS = re.compile(r"\[([^\[\]\n]+)\](?!\()")  # [ref] or [ref, ref]; not a Markdown link's text


def plan_prompt(question: str, limit: int) -> str:
    return f"Plan the research for this question, in at most {limit} sub-questions.\n\nQuestion: {question}"


def follow_up_prompt(question: str, answered: list[Subrun], limit: int) -> str:
    return (
        f"Question: {question}\n\nFindings so far:\n{findings(answered)}\n\n"
        f"List at most {limit} follow-up sub-questions for gaps the findings leave,"
        " or none if they answer the question."
    )


def writer_prompt(question: str, answered: list[Subrun]) -> str:
    return f"Question: {question}\n\nFindings (each from the sub-run named in its heading):\n{findings(answered)}"


def findings(answered: list[Subrun]) -> str:
    parts = []
    for s in answered:
        read = ", ".join(f"{src.ref} ({src.title})" for src in s.sources) or "none"
        parts.append(f"### [run:{s.run_id}] {s.question}\n{s.output or ''}\nSources read: {read}")
    return "\n\n".join(parts) or "(none)"


def questions_of(output: str | None, limit: int) -> list[SubQuestion]:
    """The planner's sub-questions (structured output, as JSON text), at most `limit`, blanks dropped."""
    try:
        plan = json.loads(output or "")
        items = plan.get("sub_questions", []) if isinstance(plan, dict) else []
        questions = [msgspec.convert(item, SubQuestion) for item in items if isinstance(item, dict)]
    except (ValueError, msgspec.ValidationError):
        return []
    return [q for q in questions if q.question.strip()][: max(limit, 0)]


def sources_of(new_messages: bytes) -> list[Source]:
    """The documents and pages a sub-run's tools returned, in order, each once."""
    try:
        messages = ModelMessagesTypeAdapter.validate_json(new_messages)
    except ValueError:
        return []
    found: dict[str, Source] = {}
    for message in messages:
        if not isinstance(message, ModelRequest):
            continue
        for part in message.parts:
            if isinstance(part, ToolReturnPart) and part.tool_name in ("search_documents", "fetch_url"):
                for source in _returned(part):
                    found.setdefault(source.ref, source)
    return list(found.values())


def _returned(part: ToolReturnPart) -> list[Source]:
    content: Any = part.content
    if isinstance(content, dict) and UNTRUSTED_KEY in content:  # fetch_url's page, quoted as untrusted data
        content = content[UNTRUSTED_KEY]
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except ValueError:
            return []  # an error message, not a result
    if part.tool_name == "search_documents" and isinstance(content, list):
        return [
            Source(ref=f"doc:{hit['document_id']}", title=str(hit.get("title", "")))
            for hit in content
            if isinstance(hit, dict) and "document_id" in hit
        ]
    if part.tool_name == "fetch_url" and isinstance(content, dict) and "url" in content:
        return [Source(ref=str(content["url"]), title=str(content.get("title") or content["url"]))]
    return []


def citations(report: str, subruns: list[Subrun]) -> list[Citation]:
    """Every reference the report makes ([doc:<id>], [run:<id>], [<url>]), in order of first use, checked
    against what the job read and ran: `verified` is false for a source no sub-run read, or an unknown run."""
    read = {src.ref: src for s in subruns if s.status == "completed" for src in s.sources}
    runs = {s.run_id: s for s in subruns if s.status == "completed"}
    cited: dict[str, Citation] = {}
    for group in BRACKETS.findall(report):
        for ref in (r.strip() for r in re.split(r"[,;]", group)):
            if ref in cited:
                continue
            if ref.startswith("run:"):
                run = runs.get(ref.removeprefix("run:"))
                title = (run.question or run.kind.value) if run else ""
                cited[ref] = Citation(ref=ref, kind="subrun", title=title, verified=run is not None)
            elif ref.startswith("doc:") or ref.startswith(("http://", "https://")):
                source = read.get(ref)
                kind = "document" if ref.startswith("doc:") else "url"
                cited[ref] = Citation(ref=ref, kind=kind, title=source.title if source else "", verified=bool(source))
    return list(cited.values())


def with_sources(report: str, cited: list[Citation]) -> str:
    """The report with a closing "Sources" list of what it cites (unverified references marked)."""
    if not cited:
        return report
    lines = [
        f"- [{c.ref}] {c.title}".rstrip() + ("" if c.verified else " (not read by this job: unverified)") for c in cited
    ]
    return f"{report.rstrip()}\n\n## Sources\n\n" + "\n".join(lines) + "\n"


def partial_report(question: str, subruns: list[Subrun], *, stopped_by: StopReason | None, reason: str) -> str:
    """The report the actor writes itself, without a model, when the job ends before its writer ran."""
    why = STOPPED[stopped_by] if stopped_by is not None else reason
    answered = [s for s in subruns if s.kind is SubrunKind.QUESTION and s.status == "completed"]
    open_ = [s for s in subruns if s.kind is SubrunKind.QUESTION and s.status != "completed"]
    lines = [f"# {question}", "", f"> This research stopped early: {why}. Below is what was found until then.", ""]
    if not answered:
        lines.append("No sub-question was answered before the job stopped.")
    for s in answered:
        lines += [f"## {s.question} [run:{s.run_id}]", "", (s.output or "").strip(), ""]
    if open_:
        lines += ["## Not answered", "", *(f"- {s.question} ({s.status})" for s in open_), ""]
    return "\n".join(lines).rstrip() + "\n"
