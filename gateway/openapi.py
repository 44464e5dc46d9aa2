"""The OpenAPI document: every error status a route can answer, with the one error body, the bearer key,
and the X-Correlation-Id every response carries.

The statuses follow from what the gateway does to every request rather than from each handler: every
`/v1` route may answer 401 (no key), 403 (the key lacks the route's scope), 422 (a bad value), 503 (an
actor or NATS is away) and 504 (no reply in time); a route with an id in its path 404; one that takes a
body 400 (not JSON, nested too deep) and 413 (too large); one that changes something 409 (a conflict
with the state it changes).
"""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)

from schemas.errors import ErrorCode

__all__ = ["COMPONENTS", "declare_errors"]

ERROR_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["error"],
    properties={
        "error": Schema(
            type=OpenAPIType.OBJECT,
            required=["code", "message", "details"],
            properties={
                "code": Schema(type=OpenAPIType.STRING, enum=[c.value for c in ErrorCode]),
                "message": Schema(type=OpenAPIType.STRING),
                "details": Schema(type=OpenAPIType.OBJECT),
            },
        )
    },
)
COMPONENTS = Components(
    security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="an API key")},
)
DESCRIPTIONS = {
    400: "the body is not JSON, or is nested too deep",
    401: "no API key, an unknown, revoked or expired one, or (a webhook) no valid signature",
    403: "the API key lacks the scope the route needs (`forbidden`; details.scope names it)",
    404: "no such id (or it is another tenant's), or no such tool (`unknown_tool`)",
    409: "it conflicts with the current state (a turn running under policy `reject`, a job not ended, ...)",
    413: "the body is too large",
    422: "a value is not acceptable (`invalid`, `unknown_agent`, `limit_exceeded`, `quota_exceeded` for a schedule"
    " faster than the tenant's `min_interval_s`)",
    429: "over a rate limit (`rate_limited`: retry after Retry-After seconds) or a tenant's quota (`quota_exceeded`,"
    " `details.quota` names it)",
    502: "the tool ran and failed, or was stopped at an isolation limit (`tool_failed`)",
    503: "an actor or NATS is unavailable: try again after Retry-After seconds",
    504: "no answer in time",
}


def _statuses(path: str, method: str) -> set[int]:
    if not path.startswith("/v1/"):
        return {503} if path == "/health" else set()
    statuses = {401, 422, 429, 503, 504}
    if not path.startswith("/v1/tasks/webhooks/"):  # a signed webhook has no key, so no scope
        statuses.add(403)
    if "{" in path:
        statuses.add(404)
    if method in ("post", "put", "patch"):
        statuses |= {400, 413}
    if path.startswith("/v1/tools/"):  # a tool called on its own
        statuses.add(502)
    if method != "get" or path.endswith("/report"):
        statuses.add(409)
    return statuses


CORRELATION_HEADER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.STRING),
    description="the request's correlation id (the caller's X-Correlation-Id or a new one), as on its bus messages",
)


RATE_LIMIT_HEADERS: dict[str, OpenAPIHeader | Reference] = {
    "RateLimit-Policy": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING), description='the rate limits applied, e.g. `"key";q=100;w=60`'
    ),
    "RateLimit": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING), description='what is left of each, e.g. `"key";r=0;t=17`'
    ),
}


def _response(status: int) -> OpenAPIResponse:
    headers: dict[str, OpenAPIHeader | Reference] = {"X-Correlation-Id": CORRELATION_HEADER}
    if status in (429, 503):
        headers["Retry-After"] = OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER), description="seconds")
    if status == 429:
        headers |= RATE_LIMIT_HEADERS
    return OpenAPIResponse(
        description=DESCRIPTIONS[status],
        headers=headers,
        content={"application/json": OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Error"))},
    )


def declare_errors(app: Litestar) -> None:
    """Add the error responses to every operation of `app`'s document (built now, once, and kept)."""
    document = app.openapi_schema
    document.components.schemas["Error"] = ERROR_SCHEMA  # Litestar sets the schemas it generates, only those
    for path, item in (document.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation: Operation | None = getattr(item, method)
            if operation is None:
                continue
            responses = operation.responses or {}
            for code in [c for c in responses if c.startswith(("4", "5"))]:
                del responses[code]  # Litestar's own 400 describes a body this gateway never sends
            for status in sorted(_statuses(path, method)):
                responses[str(status)] = _response(status)
            for response in responses.values():  # gateway/access_log.py names it on every response
                if isinstance(response, OpenAPIResponse):
                    response.headers = {"X-Correlation-Id": CORRELATION_HEADER, **(response.headers or {})}
            operation.responses = responses
            if path.startswith("/v1/") and not path.startswith("/v1/tasks/webhooks/"):
                operation.security = [{"bearer": []}]
