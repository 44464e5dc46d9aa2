"""The gateway: a thin Litestar app that turns HTTP and WebSocket requests into bus messages."""
