"""A run tree: records listed root first (as the store reads them), nested under their parents."""

from __future__ import annotations

from schemas.runs import RunNode, RunNodeKind, RunRecord

__all__ = ["nest"]


def nest(root_id: str, records: list[RunRecord]) -> RunNode:
    """The node of `root_id` with its descendants; a root that is no run (a research job) gets a node
    of its own holding just its id and the runs under it."""
    children: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.parent_run_id is not None and record.id != root_id:
            children.setdefault(record.parent_run_id, []).append(record)

    def node(record: RunRecord) -> RunNode:
        return RunNode(id=record.id, run=record, children=[node(c) for c in children.get(record.id, [])])

    root = next((r for r in records if r.id == root_id), None)
    if root is not None:
        return node(root)
    return RunNode(id=root_id, kind=RunNodeKind.RESEARCH_JOB, children=[node(c) for c in children.get(root_id, [])])
