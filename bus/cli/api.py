"""What the HTTP commands of `agentbus` share: which gateway and key, the client, its errors, resumable SSE.

The gateway is `AGENTBUS_URL`, else the one a running `agentbus run` wrote to `.agentbus/gateway.url`, else
`http://127.0.0.1:$AGENTBUS_PORT` (8000). The key is `AGENTBUS_KEY`, else the development key `agentbus run`
keeps in `.agentbus/dev-api-key`. The key is sent as a bearer token and never printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse
from rich.console import Console

__all__ = ["Api", "ApiFailure", "Target", "UsageFailure", "print_json", "printable", "run_command", "segment"]

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline
RECONNECTS = 8  # attempts in a row without an event before a stream is given up
READ_TIMEOUT_S = 60.0  # the gateway sends a keepalive comment every 15 s of silence


class ApiFailure(Exception):
    """An answer of 400 or more, with the gateway's machine-readable error (gateway/errors.py)."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, dict(details or {})

    @classmethod
    def of(cls, status: int, body: bytes) -> ApiFailure:
        try:
            error = json.loads(body)["error"]
            return cls(status, str(error["code"]), str(error["message"]), error.get("details") or {})
        except (ValueError, KeyError, TypeError):
            return cls(status, f"http_{status}", body.decode(errors="replace")[:200] or "no body")


class UsageFailure(Exception):
    """The command cannot run as asked (no key, a bad choice at a prompt): exit code 2."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    key: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Target:
        e = os.environ if env is None else env
        home = Path(e.get("AGENTBUS_HOME", ".agentbus"))
        local = f"http://127.0.0.1:{e.get('AGENTBUS_PORT', '8000')}"
        url = e.get("AGENTBUS_URL") or _read(home / "gateway.url") or local
        key = e.get("AGENTBUS_KEY") or _read(home / "dev-api-key")
        if not key:
            raise UsageFailure(f"no API key: set AGENTBUS_KEY, or start `agentbus run` here ({home}/dev-api-key)")
        return cls(url=url.rstrip("/"), key=key)


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


class Api:
    """The gateway's HTTP API as JSON values; `async with` owns the connection pool."""

    def __init__(self, target: Target, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.target = target
        self.http = httpx.AsyncClient(
            base_url=target.url,
            headers={"Authorization": f"Bearer {target.key}", "User-Agent": "agentbus-cli"},
            timeout=httpx.Timeout(30.0, read=READ_TIMEOUT_S),
            transport=transport,
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The answer's JSON (None for 204); `ApiFailure` for a 4xx/5xx."""
        response = await self.http.request(method, path, params=params, json=body, headers=headers)
        if response.status_code >= 400:
            raise ApiFailure.of(response.status_code, response.content)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def get(self, path: str, **params: str | int | None) -> Any:
        return await self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    async def events(
        self,
        path: str,
        *,
        method: str = "GET",
        body: object = None,
        headers: Mapping[str, str] | None = None,
        resume: Callable[[], str | None] | None = None,
        is_end: Callable[[ServerSentEvent], bool] = lambda _: False,
        on_retry: Callable[[Exception], None] | None = None,
    ) -> AsyncGenerator[ServerSentEvent, None]:
        """The stream's events; a dropped connection (or one that ends before `is_end`) is opened again with
        `Last-Event-ID` at `resume()` (a GET; None: the same request again), so no event comes twice.

        The reconnect loop is written here: tenacity retries a call, not an async generator that yields."""
        last_id: str | None = None
        failures = 0
        while True:
            sent = dict(headers or {})
            if last_id is not None:
                sent["Last-Event-ID"] = last_id
            try:
                async with aconnect_sse(self.http, method, path, json=body, headers=sent) as source:
                    status = source.response.status_code
                    if status == 404 and last_id is not None:  # a run the executor has not recorded yet
                        raise httpx.RemoteProtocolError("not found yet")
                    if status >= 400:
                        raise ApiFailure.of(status, await source.response.aread())
                    async for event in source.aiter_sse():
                        if event.event == "error":  # the gateway ended the stream, e.g. the key was revoked
                            raise ApiFailure.of(500, event.data.encode())
                        if not event.data and not event.event:
                            continue
                        if _seen(event.id, last_id):
                            continue  # a stream opened again from its start (a replayed POST)
                        if event.id:
                            last_id = event.id
                        failures = 0
                        yield event
                        if is_end(event):
                            return
                raise httpx.RemoteProtocolError("the stream ended before its last event")
            except httpx.TransportError as e:
                failures += 1
                if failures > RECONNECTS:
                    raise
                if on_retry is not None:
                    on_retry(e)
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
            if resume is not None and (again := resume()) is not None:
                path, method, body = again, "GET", None


def printable(text: object) -> str:
    """Text from the gateway (a model's words, a fetched page's) without control characters: no escape
    sequence it holds reaches the terminal (rich strips only a few)."""
    return CONTROL.sub("", str(text))


def segment(value: str) -> str:
    """An id typed by the user as one path segment (`/switch ../keys` names no other route)."""
    return quote(value, safe="")


def _seen(event_id: str, last_id: str | None) -> bool:
    return last_id is not None and event_id.isdigit() and last_id.isdigit() and int(event_id) <= int(last_id)


def print_json(value: object) -> None:
    """Raw JSON on stdout for scripts: no colour, no wrapping."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def run_command(work: Callable[[Api, Console], Awaitable[int]], *, console: Console | None = None) -> int:
    """Run one HTTP command: exit 0 on success, 1 with the API's error code and message, 2 for bad usage."""
    out = console or Console(highlight=False)
    err = Console(stderr=True, highlight=False)

    async def main() -> int:
        async with Api(Target.from_env()) as api:
            return await work(api, out)

    try:
        return asyncio.run(main())
    except UsageFailure as e:
        err.print(f"agentbus: {e}", markup=False)
        return 2
    except ApiFailure as e:
        err.print(f"error: {e.code}: {e.message}", markup=False)
        return 1
    except httpx.TransportError as e:
        err.print(f"error: unavailable: the gateway did not answer ({type(e).__name__}: {e})", markup=False)
        return 1
    except KeyboardInterrupt:
        return 130
