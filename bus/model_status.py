"""`agentbus models [check]`: each agent's model deployments and their breakers, from the executor
(ab.executor.svc.models); with `check`, each deployment is sent one tiny request (latency or the error)."""

from __future__ import annotations

from bus import subjects
from bus.client import Bus
from bus.headers import Trace
from schemas.models import ListModels, ModelList

__all__ = ["CHECK_TIMEOUT_S", "model_report"]

CHECK_TIMEOUT_S = 60.0


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


async def model_report(bus: Bus, *, check: bool) -> str:
    listed = await bus.request(
        subjects.service(subjects.ActorName.EXECUTOR, "models"),
        ListModels(check=check),
        ModelList,
        trace=Trace(tenant="cli"),
        timeout=CHECK_TIMEOUT_S if check else 5.0,
    )
    rows = [["AGENT", "#", "DEPLOYMENT", "WEIGHT", "BREAKER", "RETRY IN", "LAST ERROR"]]
    for m in listed.models:
        wait = f"{m.retry_after_s:.0f}s" if m.retry_after_s else "-"
        rows.append(
            [
                m.agent,
                str(m.position),
                m.deployment,
                str(m.weight),
                m.breaker.phase.value,
                wait,
                m.breaker.last_error[:80],
            ]
        )
    lines = _table(rows) if len(rows) > 1 else ["no agent runs on a provider model"]
    if listed.offline:
        lines.append(f"on the offline model (no provider configured): {', '.join(listed.offline)}")
    if check:
        checked = [["DEPLOYMENT", "CHECK"]]
        for c in listed.checks:
            checked.append([c.deployment, f"ok {c.ms:.0f} ms" if c.ok else f"error: {c.error[:160]}"])
        lines += ["", *(_table(checked) if len(checked) > 1 else ["nothing to check"])]
    return "\n".join(lines)
