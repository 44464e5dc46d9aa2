"""The error a tenant over one of its quotas gets, the same from every actor and the gateway.

`quota_exceeded` (429), with `details["quota"]` naming the quota (a field of schemas/tenants.py `Quotas`) and
`details["limit"]` its value; `min_interval_s` (a schedule faster than allowed) is answered 422 by the gateway.
"""

from __future__ import annotations

from bus.errors import BusError
from schemas.errors import ErrorCode

__all__ = ["MIN_INTERVAL", "quota_exceeded"]

MIN_INTERVAL = "min_interval_s"


def quota_exceeded(quota: str, limit: int, message: str) -> BusError:
    details = {"quota": quota, "limit": str(limit)}
    return BusError(ErrorCode.QUOTA_EXCEEDED, f"{message} (quota {quota}: {limit})", details)
