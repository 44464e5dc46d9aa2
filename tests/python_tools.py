"""`python:` tools the tests name in their agents files."""

from __future__ import annotations

import asyncio


def ping() -> str:
    """Answer pong."""
    return "pong"


def big(size: int = 5000) -> str:
    """Answer `size` characters."""
    return "x" * size


async def slow(seconds: float = 30.0) -> str:
    """Answer after `seconds`."""
    await asyncio.sleep(seconds)
    return "done"


def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


def hog() -> str:
    """Allocate memory without end."""
    chunks = []
    while True:
        chunks.append(bytearray(16 * 1024 * 1024))


def spin() -> str:
    """Loop without end."""
    while True:
        pass


def send_email(to: str, body: str = "") -> str:
    """Send an email. Each one sent is a line in the file AGENTBUS_TEST_OUTBOX names: a test counts them."""
    import json
    import os

    with open(os.environ["AGENTBUS_TEST_OUTBOX"], "a") as outbox:
        outbox.write(json.dumps({"to": to, "body": body}) + "\n")
    return f"sent to {to}"
