"""Outgoing requests connect to the address that was checked: DNS rebinding, mixed answers, redirects,
6to4 and NAT64, TLS for the host name, MCP's client; email recipients and STARTTLS.

Real servers on loopback. 127.0.0.2 stands for a public address (allow-listed as `127.0.0.2/32`,
served by the test); 127.0.0.1 for an internal one (not allowed), where a canary listener on the
same port counts connections and must count none. The resolver is the test's (the outbound rules
take one), so a name can answer one thing to the check and another to a second lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from actors._outbound import Allowlist, UnsafeURL, check_url, internal
from actors._outbound_http import http_client, mcp_http_client
from actors.notifier.actor import NotifierActor
from actors.notifier.channels import one_recipient, send_email, send_http
from actors.notifier.config import NotifierConfig
from actors.research.fetch import FetchError, fetch_text
from bus import subjects
from bus.client import Bus
from bus.config import BusConfig
from bus.embedded import free_port
from bus.headers import Trace, new_id
from bus.secrets import SecretBox
from schemas.notifier import Channel, Deliver, DeliveryList, DeliveryStatus, ListDeliveries
from tests.conftest import running, wait_until
from tests.receivers import SmtpReceiver, verify_standard_webhook

GOOD = "127.0.0.2"
CANARY = "127.0.0.1"
TENANT = "acme"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


class Listener:
    """A real HTTP/1.1 server on one address: counts connections, keeps each request head, answers `response`."""

    def __init__(self, host: str, port: int, response: bytes = OK, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.response, self.tls = host, port, response, tls
        self.connections = 0
        self.heads: list[str] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            async with asyncio.timeout(5):
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                self.heads.append(head)
                length = next(
                    (int(h.split(":")[1]) for h in head.lower().split("\r\n") if h.startswith("content-length:")), 0
                )
                await reader.readexactly(length)
                writer.write(self.response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)


@contextlib.asynccontextmanager
async def good_and_canary(response: bytes = OK) -> AsyncIterator[tuple[Listener, Listener, int]]:
    port = free_port()
    async with Listener(GOOD, port, response) as good, Listener(CANARY, port) as canary:
        yield good, canary, port


class Rebinding:
    """Answers GOOD the first time a name is asked and CANARY every time after: DNS rebinding."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return [GOOD] if len(self.asked) == 1 else [CANARY]


class Fixed:
    """Answers from a table: name -> addresses."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = table

    async def __call__(self, host: str, port: int) -> list[str]:
        return list(self.table[host])


def rules(resolver: Rebinding | Fixed, allowed: str = f"{GOOD}/32") -> Allowlist:
    return Allowlist.parse(allowed, resolver=resolver)


def notifier_config(allow: Allowlist, database_url: str = "postgresql://unused", **fields: object) -> NotifierConfig:
    return NotifierConfig(database_url=database_url, allow=allow, retry_schedule_s=(0.2,), http_timeout_s=3.0, **fields)  # type: ignore[arg-type]


def webhook(url: str, box: SecretBox | None = None) -> Deliver:
    run_id = new_id()
    return Deliver(
        delivery_id=f"{run_id}-webhook",
        task_run_id=run_id,
        channel=Channel.WEBHOOK,
        target=url,
        title="done",
        body="the result",
        payload={"output": "the result"},
        sealed_signing_secret=(box or SecretBox.from_env()).seal(SECRET),
    )


# --- the address check ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("2002:c000:0201::1", True),  # 6to4 (192.0.2.1 behind a relay)
        ("2002:7f00:1::1", True),  # 6to4 of 127.0.0.1
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8: refused too (the gateway's side is not ours to judge)
        ("64:ff9b:1::a00:1", True),  # NAT64 local-use prefix
        ("::ffff:127.0.0.1", True),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", True),
        ("100.64.0.1", True),  # CGNAT
        ("169.254.169.254", True),  # cloud metadata
        ("fd00::1", True),
        ("::", True),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_internal_and_transition_addresses_are_refused(address: str, refused: bool) -> None:
    assert internal(ipaddress.ip_address(address)) is refused


async def test_a_6to4_or_nat64_answer_is_refused_before_any_connection() -> None:
    for answer in ("2002:7f00:1::1", "64:ff9b::7f00:1"):
        with pytest.raises(UnsafeURL, match="private or internal"):
            await check_url("https://looks-public.test/", Allowlist(resolver=Fixed({"looks-public.test": [answer]})))


# --- DNS rebinding ---------------------------------------------------------------------------------


async def test_rebinding_after_the_check_reaches_the_canary_never(bus_config: BusConfig, database_url: str) -> None:
    """The check at acceptance sees GOOD; the name then rebinds to the canary. The notifier's own
    connection resolves once, sees the canary's address, and refuses: no connection is made."""
    resolver = Rebinding()
    async with good_and_canary() as (good, canary, port):
        url = f"http://rebind.test:{port}/hook"
        await check_url(url, rules(resolver))  # as when the task was created: passes
        config = notifier_config(rules(resolver), database_url)
        async with running(NotifierActor(bus_config, config)):
            bus = await Bus.connect(bus_config)
            try:
                d = webhook(url)
                await bus.publish(subjects.notifier_command(TENANT, d.delivery_id), d, trace=Trace(tenant=TENANT))
                service = subjects.service(subjects.ActorName.NOTIFIER, "list_deliveries")

                async def failed() -> bool:
                    found = await bus.request(
                        service, ListDeliveries(task_run_id=d.task_run_id), DeliveryList, trace=Trace(tenant=TENANT)
                    )
                    return bool(found.deliveries) and found.deliveries[0].status is DeliveryStatus.FAILED

                await wait_until(failed, what="the refusal")
                (entry,) = (
                    await bus.request(
                        service, ListDeliveries(task_run_id=d.task_run_id), DeliveryList, trace=Trace(tenant=TENANT)
                    )
                ).deliveries
            finally:
                await bus.close()
    assert len(entry.attempts) == 1 and "127.0.0.1, a private or internal address" in (entry.attempts[0].error or "")
    assert canary.connections == 0 and good.connections == 0
    assert resolver.asked == ["rebind.test", "rebind.test"]  # the check, then the connection: one lookup each


async def test_a_request_connects_to_the_address_its_one_lookup_checked() -> None:
    """The name is looked up once per connection; the request reaches the address that lookup checked
    (with the Host header and a valid signature for the name), not what a second lookup would say."""
    resolver = Rebinding()
    async with good_and_canary() as (good, canary, port), http_client(rules(resolver), timeout=3) as client:
        url = f"http://rebind.test:{port}/hook"
        d = webhook(url)
        sent = await send_http(notifier_config(rules(resolver)), d, client)
    assert canary.connections == 0 and good.connections == 1
    assert sent.ok, sent.error
    assert resolver.asked == ["rebind.test"]
    head = good.heads[0]
    assert f"host: rebind.test:{port}" in head.lower()
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
    }
    body = (
        b'{"type":"task_run.finished","delivery_id":"' + d.delivery_id.encode() + b'","data":{"output":"the result"}}'
    )
    assert verify_standard_webhook(SECRET, headers, body)


async def test_an_answer_with_one_internal_address_is_refused() -> None:
    resolver = Fixed({"mixed.test": [GOOD, CANARY]})
    async with good_and_canary() as (good, canary, port), http_client(rules(resolver), timeout=3) as client:
        sent = await send_http(notifier_config(rules(resolver)), webhook(f"http://mixed.test:{port}/"), client)
    assert not sent.ok and sent.permanent and "unsafe URL" in (sent.error or "")
    assert good.connections == 0 and canary.connections == 0


async def test_a_redirect_inward_is_refused_at_its_own_connection() -> None:
    port = free_port()
    for location in (f"http://inner.test:{port}/secret", f"http://127.0.0.1:{port}/secret"):
        redirect = (
            f"HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()
        )
        resolver = Fixed({"site.test": [GOOD], "inner.test": [CANARY]})
        async with Listener(GOOD, port, redirect) as good, Listener(CANARY, port) as canary:
            with pytest.raises(FetchError, match="refusing to fetch"):
                await fetch_text(f"http://site.test:{port}/start", allow=rules(resolver), max_bytes=1000, timeout_s=5)
        assert good.connections == 1 and canary.connections == 0


async def test_mcp_over_http_uses_the_checked_address() -> None:
    resolver = Rebinding()
    async with good_and_canary() as (good, canary, port), mcp_http_client(rules(resolver)) as client:
        response = await client.get(f"http://mcp.test:{port}/mcp")
    assert response.status_code == 200 and good.connections == 1 and canary.connections == 0
    assert resolver.asked == ["mcp.test"]


async def test_a_loopback_receiver_works_when_loopback_is_allowed() -> None:
    port = free_port()
    async with Listener(CANARY, port) as local, http_client(Allowlist.parse("127.0.0.1"), timeout=3) as client:
        sent = await send_http(
            notifier_config(Allowlist.parse("127.0.0.1")), webhook(f"http://127.0.0.1:{port}/"), client
        )
    assert sent.ok and local.connections == 1


# --- TLS keeps the host name ------------------------------------------------------------------------


def _certificates(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for `name`, client context trusting only its CA)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentbus test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / "leaf.pem", tmp_path / "leaf.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


async def test_tls_is_checked_for_the_host_name_not_the_address(tmp_path: Path) -> None:
    server, client_context = _certificates(tmp_path, "service.test")
    port = free_port()
    resolver = Fixed({"service.test": [GOOD], "other.test": [GOOD]})
    async with (
        Listener(GOOD, port, tls=server) as good,
        http_client(rules(resolver), timeout=3, verify=client_context) as client,
    ):
        response = await client.get(f"https://service.test:{port}/")
        assert response.status_code == 200 and response.text == "ok"
        with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
            await client.get(f"https://other.test:{port}/")  # same address, a name the certificate is not for
    assert good.heads and f"host: service.test:{port}" in good.heads[0].lower()


# --- email ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "one"),
    [
        ("someone@example.org", True),
        ("first.last+tag@mail.example.org", True),
        ("a@example.org, b@example.org", False),
        ("a@example.org,b@example.org", False),
        ("a@example.org;b@example.org", False),
        ("a@example.org\r\nBcc: b@example.org", False),
        ("Someone <a@example.org>", False),
        ('"a,b"@example.org', False),
    ],
)
def test_an_email_target_is_one_address(target: str, one: bool) -> None:
    assert one_recipient(target) is one


async def test_an_email_to_a_list_is_dead_lettered(bus_config: BusConfig, database_url: str) -> None:
    with SmtpReceiver() as smtp:
        config = NotifierConfig(database_url=database_url, smtp_host="127.0.0.1", smtp_port=smtp.port)
        async with running(NotifierActor(bus_config, config)):
            bus = await Bus.connect(bus_config)
            try:
                dead = await bus.nc.subscribe(subjects.dead_letter(subjects.ActorName.NOTIFIER))
                run_id = new_id()
                d = Deliver(
                    delivery_id=f"{run_id}-email", task_run_id=run_id, channel=Channel.EMAIL,
                    target="a@example.org, b@example.org", title="t", body="b",
                )  # fmt: skip
                await bus.publish(subjects.notifier_command(TENANT, d.delivery_id), d, trace=Trace(tenant=TENANT))
                letter = await dead.next_msg(timeout=10)
                service = subjects.service(subjects.ActorName.NOTIFIER, "list_deliveries")

                async def failed() -> bool:
                    found = await bus.request(
                        service, ListDeliveries(task_run_id=run_id), DeliveryList, trace=Trace(tenant=TENANT)
                    )
                    return bool(found.deliveries) and found.deliveries[0].status is DeliveryStatus.FAILED

                await wait_until(failed, what="the delivery to be marked failed")
            finally:
                await bus.close()
    assert b"b@example.org" in letter.data and "one address" in str(letter.headers)
    assert smtp.messages == []


def test_starttls_is_on_unless_the_smtp_host_is_loopback() -> None:
    def starttls(**fields: object) -> bool:
        return NotifierConfig(database_url="postgresql://unused", **fields).starttls  # type: ignore[arg-type]

    assert starttls(smtp_host="smtp.example.org") is True
    assert starttls(smtp_host="127.0.0.1") is False and starttls(smtp_host="localhost") is False
    assert starttls(smtp_host="::1") is False
    assert starttls(smtp_host="127.0.0.1", smtp_starttls=True) is True
    assert starttls(smtp_host="smtp.example.org", smtp_starttls=False) is False
    assert starttls(smtp_host="smtp.example.org", smtp_tls=True) is False  # implicit TLS instead


async def test_starttls_refuses_a_server_that_cannot(database_url: str) -> None:
    """With STARTTLS on, a server offering none is not sent the message in clear."""
    with SmtpReceiver() as smtp:
        config = NotifierConfig(
            database_url=database_url, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_starttls=True
        )
        run_id = new_id()
        d = Deliver(
            delivery_id=f"{run_id}-email",
            task_run_id=run_id,
            channel=Channel.EMAIL,
            target="a@example.org",
            title="t",
            body="b",
        )
        sent = await send_email(config, d)
    assert not sent.ok and "STARTTLS" in (sent.error or "").upper()
    assert smtp.messages == []
