"""One error body for every 4xx/5xx: `{"error": {"code", "message", "details"}}`.

No body carries an exception's text: an actor's `internal` reply, and anything unexpected here, is
logged with its text and answered with a fixed message.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from bus.errors import BusError
from schemas.errors import ErrorCode

__all__ = [
    "HTTP_STATUS",
    "RETRY_AFTER_S",
    "ApiError",
    "ErrorEnvelope",
    "close_code",
    "error_json",
    "error_response",
    "exception_handlers",
    "retry_after",
]

log = structlog.get_logger("gateway")
RETRY_AFTER_S = 5  # what a 503 tells the client to wait
INTERNAL_MESSAGE = "internal error"
MAX_MESSAGE = 500  # a decoder may quote the bad value: a hostile one can be as long as the body


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID: 422,
    ErrorCode.MALFORMED: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNKNOWN_AGENT: 422,
    ErrorCode.LIMIT_EXCEEDED: 422,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.BUDGET_EXCEEDED: 429,
    ErrorCode.UNKNOWN_TOOL: 404,
    ErrorCode.TOOL_FAILED: 502,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.MODEL_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
CODE_OF_STATUS = {
    400: ErrorCode.MALFORMED,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.TOO_LARGE,
    422: ErrorCode.INVALID,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
    504: ErrorCode.TIMEOUT,
}


class ErrorBody(msgspec.Struct, frozen=True):
    code: ErrorCode
    message: str
    details: dict[str, Any] = {}


class ErrorEnvelope(msgspec.Struct, frozen=True):
    error: ErrorBody


class ApiError(Exception):
    """Raised by handlers: becomes the error body with `status`."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def _envelope(code: ErrorCode, message: str, details: dict[str, Any] | None) -> ErrorEnvelope:
    return ErrorEnvelope(ErrorBody(code=code, message=_short(message), details=details or {}))


def close_code(code: ErrorCode) -> int:
    """A WebSocket's close code for an error: 4000 + the HTTP status it would have answered (4404, 4429, 4503)."""
    return 4000 + HTTP_STATUS[code]


def error_json(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> bytes:
    """The error body as bytes: for an answer kept under an Idempotency-Key, or a WebSocket frame."""
    return msgspec.json.encode(_envelope(code, message, details))


def retry_after(code: ErrorCode, details: dict[str, Any] | None) -> str:
    """A 503's Retry-After: how long the agent's models stay down (`model_unavailable` says), else RETRY_AFTER_S."""
    said = (details or {}).get("retry_after_s")
    if code is ErrorCode.MODEL_UNAVAILABLE and isinstance(said, str) and said.isdigit():
        return said
    return str(RETRY_AFTER_S)


def error_response(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> Response[ErrorEnvelope]:
    body = _envelope(code, message, details)
    headers: dict[str, str] = {}
    if code is ErrorCode.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    elif code in (ErrorCode.UNAVAILABLE, ErrorCode.MODEL_UNAVAILABLE):
        headers["Retry-After"] = retry_after(code, details)
    status = HTTP_STATUS[code]
    if code is ErrorCode.QUOTA_EXCEEDED and (details or {}).get("quota") == "min_interval_s":
        status = 422  # a schedule faster than the tenant may have: no waiting makes it acceptable
    return Response(body, status_code=status, headers=headers)


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[ErrorEnvelope]:
    return error_response(exc.code, exc.message, exc.details)


def _bus_error(request: Request[Any, Any, Any], exc: BusError) -> Response[ErrorEnvelope]:
    if exc.code is ErrorCode.INTERNAL:  # an actor's exception text stays in the logs
        log.error("an actor failed", path=request.url.path, error=exc.message)
        return error_response(ErrorCode.INTERNAL, INTERNAL_MESSAGE)
    return error_response(exc.code, exc.message, dict(exc.details))


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorEnvelope]:
    """A body or query that does not match its schema (a body that is not JSON at all is a plain 400)."""
    problems = [
        {k: _short(v) if isinstance(v, str) else v for k, v in p.items()} if isinstance(p, dict) else p
        for p in (exc.extra if isinstance(exc.extra, list) else [])
    ]
    said = [f"{p['key']}: {p['message']}" for p in problems if isinstance(p, dict) and p.get("key")]
    message = "; ".join(said[:3]) or exc.detail or "the request does not match its schema"
    return error_response(ErrorCode.INVALID, message, {"errors": problems})


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorEnvelope]:
    code = CODE_OF_STATUS.get(exc.status_code, ErrorCode.INTERNAL if exc.status_code >= 500 else ErrorCode.INVALID)
    if exc.status_code >= 500:
        log.error("server error", path=request.url.path, status=exc.status_code, error=exc.detail)
    response = error_response(code, exc.detail if exc.status_code < 500 else INTERNAL_MESSAGE)
    response.status_code = exc.status_code
    return response


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorEnvelope]:
    log.exception("unhandled error", path=request.url.path)
    response = error_response(ErrorCode.INTERNAL, INTERNAL_MESSAGE)
    response.status_code = HTTP_500_INTERNAL_SERVER_ERROR
    return response


exception_handlers: Any = {
    ApiError: _api_error,
    BusError: _bus_error,
    ValidationException: _validation,
    HTTPException: _http,
    Exception: _unexpected,
}
