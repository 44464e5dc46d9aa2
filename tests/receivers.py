"""Real receivers for outbound tests: an SMTP server (aiosmtpd) and an HTTP server (uvicorn), on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bus.embedded import free_port
from tests.conftest import wait_until

__all__ = ["HttpReceiver", "Received", "SmtpReceiver", "read_body", "verify_standard_webhook"]


class SmtpReceiver:
    """An SMTP server that keeps every message it is sent."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.messages.append(message_from_bytes(content if isinstance(content, bytes) else content.encode()))
        return "250 Message accepted for delivery"

    def __enter__(self) -> SmtpReceiver:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._controller.stop()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


async def read_body(receive: Any) -> bytes:
    """An ASGI request's whole body."""
    body: bytes = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            return body


@dataclass
class HttpReceiver:
    """An HTTP server that records every request; `fail` answers that many with `fail_status`."""

    fail: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    requests: list[Received] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if self.fail > 0:
            self.fail -= 1
            status = self.fail_status
            extra = [(b"retry-after", self.retry_after.encode())] if self.retry_after else []
        else:
            self.requests.append(Received(scope["path"], headers, body, time.monotonic()))
            status, extra = 200, []
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"try later"})

    async def __aenter__(self) -> HttpReceiver:
        self._server = uvicorn.Server(uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="warning"))
        self._task = asyncio.create_task(self._server.serve())

        async def started() -> bool:
            return bool(self._server.started)

        await wait_until(started, what="the HTTP receiver to start")
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.should_exit = True
        await asyncio.wait_for(self._task, 10)


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300) -> bool:
    """Standard Webhooks verification, written from the spec (not with the library the notifier signs with)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, g) for g in given)
