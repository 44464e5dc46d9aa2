"""`python -m gateway`: serve the HTTP API (AGENTBUS_HOST / AGENTBUS_PORT) against NATS_URL."""

from __future__ import annotations

import uvicorn

from bus.config import BusConfig
from bus.logging import configure_logging
from bus.tracing import setup_tracing
from gateway.app import create_app
from gateway.config import GatewayConfig


def main() -> None:
    configure_logging("gateway")
    setup_tracing("agentbus-gateway")
    config = GatewayConfig.from_env()
    app = create_app(config, BusConfig.from_env())
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=config.keep_alive_s,
    )


if __name__ == "__main__":
    main()
