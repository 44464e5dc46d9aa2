"""The floor a chat turn is compared with: HTTP -> NATS -> process -> NATS -> process -> back.

Built from the same parts as the platform (uvicorn + Litestar, nats-py, uvloop) with no JetStream,
no Postgres and no agent: what the shape of the path costs by itself.

    python -m tests.bench.floor http PORT   # Litestar app: POST /turn -> request floor.a
    python -m tests.bench.floor relay       # floor.a -> request floor.b -> reply
    python -m tests.bench.floor echo        # floor.b -> reply
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
import uvloop
from litestar import Litestar, post
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.bench.raw import raw_connect

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


async def relay() -> None:
    nc = await raw_connect(NATS_URL)

    async def handle(msg: Msg) -> None:
        reply = await nc.request("floor.b", msg.data, timeout=5)
        await msg.respond(reply.data)

    await nc.subscribe("floor.a", queue="floor", cb=handle)
    await asyncio.Event().wait()


async def echo() -> None:
    nc = await raw_connect(NATS_URL)

    async def handle(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("floor.b", queue="floor", cb=handle)
    await asyncio.Event().wait()


def http(port: int) -> None:
    state: dict[str, Client] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        state["nc"] = await raw_connect(NATS_URL)
        yield
        await state["nc"].drain()

    @post("/turn")
    async def turn(data: dict[str, str]) -> dict[str, str]:
        reply = await state["nc"].request("floor.a", data["message"].encode(), timeout=5)
        return {"message": reply.data.decode()}

    app = Litestar([turn], lifespan=[lifespan])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", log_level="warning")


def main() -> None:
    role = sys.argv[1]
    if role == "http":
        http(int(sys.argv[2]))
    elif role == "relay":
        uvloop.run(relay())
    elif role == "echo":
        uvloop.run(echo())
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
