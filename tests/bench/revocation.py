"""Key revocation benchmark: two gateway replicas (separate processes) on one NATS; a key revoked through
one (`DELETE /v1/keys/{id}`) is polled on the other until it answers 401: the time from the revoke's
answer to the first refusal, over several keys. Beside it, what the audit trail adds to a change: the
time of the gateway's `before_send` hook (it only queues the event; a task of its own writes it)."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bus import keys
from bus.client import Bus
from gateway.audit_trail import audit_response
from tests.bench.harness import Infra, Report, Scale, free_port, processes, wait_http

POLL_S = 0.002


async def _revocations(infra: Infra, logs: Path, count: int) -> list[float]:
    ports = [free_port(), free_port()]
    env = infra.env(AGENTBUS_ACTORS="")
    bus = await Bus.connect(infra.bus_config(name="bench-revocation"))
    try:
        admin = await keys.create_key(bus, tenant="bench-keys", name="admin")
        with (
            processes({"gateway-0": ["-m", "gateway"]}, {**env, "AGENTBUS_PORT": str(ports[0])}, logs) as first,
            processes({"gateway-1": ["-m", "gateway"]}, {**env, "AGENTBUS_PORT": str(ports[1])}, logs) as second,
        ):
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            for url in urls:
                await wait_http(f"{url}/schema/openapi.json", children={**first, **second})
            latencies: list[float] = []
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {admin}"}, timeout=10) as http:
                for n in range(count):
                    made = (await http.post(f"{urls[0]}/v1/keys", json={"name": f"victim-{n}"})).json()
                    victim = {"Authorization": f"Bearer {made['key']}"}
                    assert (await http.post(f"{urls[1]}/v1/ws-tokens", headers=victim)).status_code == 201
                    deleted = await http.delete(f"{urls[0]}/v1/keys/{made['id']}")
                    assert deleted.status_code == 204, deleted.text
                    revoked = time.perf_counter()
                    while (await http.post(f"{urls[1]}/v1/ws-tokens", headers=victim)).status_code != 401:
                        if time.perf_counter() - revoked > 10:
                            raise RuntimeError("the other replica still accepts a revoked key after 10 s")
                        await asyncio.sleep(POLL_S)
                    latencies.append((time.perf_counter() - revoked) * 1000)
            return latencies
    finally:
        await bus.close()


class _Principal:
    tenant, key_id = "bench", "key_bench"


class _Audit:
    def note(self, event: object) -> None:
        pass


async def _hook_us(count: int) -> float:
    """Microseconds the audit hook takes for one audited change (start and body of a 201)."""
    app = type("App", (), {"state": type("State", (), {"gateway": type("G", (), {"audit": _Audit()})()})()})()
    body = b'{"id":"01a2-conversation","pattern":"chatbot"}'
    started = time.perf_counter()
    for _ in range(count):
        scope: dict[str, Any] = {
            "state": {"agentbus.principal": _Principal()},
            "method": "POST",
            "path": "/v1/conversations",
            "path_template": "/v1/conversations",
            "path_params": {},
            "app": app,
        }
        await audit_response({"type": "http.response.start", "status": 201, "headers": []}, scope)
        await audit_response({"type": "http.response.body", "body": body, "more_body": False}, scope)
    return (time.perf_counter() - started) / count * 1e6


async def run(infra: Infra, logs: Path, scale: Scale, report: Report) -> None:
    count = 3 if scale.smoke else 20
    latencies = await _revocations(infra, logs, count)
    report.table(
        f"revocation: a key revoked on one gateway replica, refused by the other ({count} keys, polled every 2 ms)",
        ("keys", "median ms", "max ms"),
        [(count, f"{statistics.median(latencies):.1f}", f"{max(latencies):.1f}")],
    )
    report.target(
        "key revoked → refused by every replica", f"max {max(latencies):.0f} ms", "≤ 1000 ms", max(latencies) <= 1000
    )
    hook = await _hook_us(200 if scale.smoke else 20_000)
    report.table("audit: what the before_send hook adds to an audited change", ("µs per change",), [(f"{hook:.1f}",)])
