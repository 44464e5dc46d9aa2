"""One error body for every 4xx/5xx: `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from bus.errors import BusError
from schemas.errors import ErrorCode

__all__ = ["HTTP_STATUS", "ApiError", "error_response", "exception_handlers"]

log = structlog.get_logger("gateway")

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID: 422,
    ErrorCode.MALFORMED: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.LIMIT_EXCEEDED: 422,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
CODE_OF_STATUS = {
    400: ErrorCode.MALFORMED,
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.TOO_LARGE,
    422: ErrorCode.INVALID,
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


def error_response(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> Response[ErrorEnvelope]:
    body = ErrorEnvelope(ErrorBody(code=code, message=message, details=details or {}))
    headers = {"WWW-Authenticate": "Bearer"} if code is ErrorCode.UNAUTHORIZED else None
    return Response(body, status_code=HTTP_STATUS[code], headers=headers)


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[ErrorEnvelope]:
    return error_response(exc.code, exc.message, exc.details)


def _bus_error(_: Request[Any, Any, Any], exc: BusError) -> Response[ErrorEnvelope]:
    return error_response(exc.code, exc.message, dict(exc.details))


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorEnvelope]:
    """A body or query that does not match its schema (a body that is not JSON at all is a plain 400)."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    return error_response(
        ErrorCode.INVALID, exc.detail or "the request does not match its schema", {"errors": problems}
    )


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorEnvelope]:
    code = CODE_OF_STATUS.get(exc.status_code, ErrorCode.INTERNAL if exc.status_code >= 500 else ErrorCode.INVALID)
    response = error_response(code, exc.detail)
    response.status_code = exc.status_code
    return response


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorEnvelope]:
    log.exception("unhandled error", path=request.url.path)
    response = error_response(ErrorCode.INTERNAL, "internal error")
    response.status_code = HTTP_500_INTERNAL_SERVER_ERROR
    return response


exception_handlers: Any = {
    ApiError: _api_error,
    BusError: _bus_error,
    ValidationException: _validation,
    HTTPException: _http,
    Exception: _unexpected,
}
