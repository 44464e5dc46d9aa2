"""GET /asyncapi.json: the bus's AsyncAPI 3.0.0 document, as `python -m bus.asyncapi` prints it.

Built from the code (bus/catalog.py, bus/subjects.py, bus/permissions.py, schemas/) once per process, so
a gateway installed from the wheel serves it without the repository's docs/ folder. No API key, like
/schema: it describes the bus, no tenant's data.
"""

from __future__ import annotations

import functools

from litestar import Response, get

from bus.asyncapi import render

__all__ = ["asyncapi_document"]


@functools.cache
def _document() -> bytes:
    return render().encode()


@get("/asyncapi.json", include_in_schema=False, sync_to_thread=True)  # built once, off the event loop
def asyncapi_document() -> Response[bytes]:
    return Response(_document(), media_type="application/json")
