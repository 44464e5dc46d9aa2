"""Property tests of the HTTP API: schemathesis generates requests from the gateway's own OpenAPI document
and sends them to a running platform; no answer may be a 5xx, and every answer must be one the document
declares (status, content type, body schema)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import hypothesis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Platform

Start = Callable[..., Awaitable[Platform]]
EXAMPLES_PER_OPERATION = 12  # about 30 operations: the whole run stays well under a minute
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _fuzz(url: str, key: str) -> list[str]:
    """Every operation's failures, one line each (hypothesis stops an operation at its first failure)."""
    schema = schemathesis.openapi.from_url(f"{url}/schema/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the document has an invalid operation: {result.err()}"
        operation = result.ok()
        if "text/event-stream" in operation.definition.raw["responses"].get("200", {}).get("content", {}):
            continue  # a live stream never ends: nothing to validate (tests/test_notifications.py follows it)

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking: bounded time
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15)
            case.validate_response(response, checks=CHECKS)

        try:
            check()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # schemathesis reports failures as a BaseExceptionGroup
            failures.append(f"{operation.label}: {' '.join(str(e).split())[:600]}")
    return failures


async def test_generated_requests_get_declared_answers_and_never_a_server_error(start_platform: Start) -> None:
    platform = await start_platform(background=True, reply_timeout_s=5.0)
    failures = await asyncio.wait_for(asyncio.to_thread(_fuzz, platform.url, platform.key), 80)
    assert failures == [], "\n".join(failures)


async def test_every_route_declares_its_error_statuses_with_the_error_body(start_platform: Start) -> None:
    platform = await start_platform()
    async with httpx.AsyncClient(base_url=platform.url) as client:
        document = (await client.get("/schema/openapi.json")).json()
    error = {"$ref": "#/components/schemas/Error"}
    assert set(document["components"]["schemas"]["Error"]["required"]) == {"error"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation["responses"]
            expected = {"503"} if path == "/health" else {"401", "422", "429", "503", "504"}
            if "{" in path:
                expected.add("404")
            if method in ("post", "put", "patch"):
                expected |= {"400", "413"}
            assert expected <= responses.keys(), (method, path, sorted(responses))
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == error, (method, path, status)
            if "503" in responses:
                assert "Retry-After" in responses["503"]["headers"]
            if "429" in responses:
                assert {"Retry-After", "RateLimit-Policy", "RateLimit"} <= responses["429"]["headers"].keys()
