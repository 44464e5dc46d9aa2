"""The one error shape: bus replies and HTTP error bodies carry the same fields."""

from __future__ import annotations

import enum

from schemas._base import Message

__all__ = ["ErrorCode", "ErrorReply"]


class ErrorCode(enum.StrEnum):
    """Machine-readable error codes; the gateway maps each to one HTTP status (gateway/errors.py)."""

    INVALID = "invalid"  # 422: the request is well-formed but its values are not acceptable
    MALFORMED = "malformed"  # 400: the body could not be decoded at all
    UNAUTHORIZED = "unauthorized"  # 401
    NOT_FOUND = "not_found"  # 404 (also for another tenant's ids)
    CONFLICT = "conflict"  # 409: e.g. a turn is running and the policy is `reject`
    TOO_LARGE = "too_large"  # 413
    UNKNOWN_AGENT = "unknown_agent"  # 422: no such agent (or pipeline); details["agents"] lists those that exist
    UNKNOWN_TOOL = "unknown_tool"  # 404: POST /v1/tools/{name}/call names no tool; details["tools"] lists them
    TOOL_FAILED = "tool_failed"  # 502: the tool ran and failed (or was stopped at an isolation limit)
    LIMIT_EXCEEDED = "limit_exceeded"  # 422: a run hit a limit (details["limit"] names it)
    FORBIDDEN = "forbidden"  # 403: the key's scopes (or the tenant's allowed agents) do not cover this
    RATE_LIMITED = "rate_limited"  # 429 with Retry-After: too many requests for the key, tenant or task
    QUOTA_EXCEEDED = "quota_exceeded"  # 429 (422 for a too-short interval): details["quota"] names the quota
    BUDGET_EXCEEDED = "budget_exceeded"  # 429: the tenant's token or dollar budget is spent; details["budget"] names it
    TIMEOUT = "timeout"  # 504: the bus did not answer in time
    UNAVAILABLE = "unavailable"  # 503: an actor or NATS is down
    # 503 with Retry-After: every model of the agent is down (its breakers open); details["retry_after_s"] says how long
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL = "internal"  # 500


class ErrorReply(Message, frozen=True, kw_only=True, tag="error"):
    """A request that failed; `code` says how, `message` says what for a person."""

    code: ErrorCode
    message: str
    details: dict[str, str] = {}
