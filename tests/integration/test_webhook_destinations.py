"""Where the dispatcher sends: every address a host resolves to is checked at send time, a
refused one is a failed attempt that is never sent, and the request goes to the checked
address itself (Host, TLS SNI and the certificate check keep the host name)."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.config import load_settings
from service.domain.clock import ManualClock
from service.domain.destinations import DestinationPolicy
from service.domain.events import EventType
from service.domain.webhooks import RetryPolicy
from service.usecases import webhooks
from service.usecases.dispatch import DispatchConfig, DispatchReport, dispatch_program, new_client
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import enrol
from tests.webhook_receiver import LOOPBACK_ALLOWED, delivery_rows, receiver

PUBLIC_ONLY = DispatchConfig(timeout_s=2.0, retry=RetryPolicy(base_delay_s=1.0, max_delay_s=2.0), disable_after=1000)
LOOPBACK_OK = DispatchConfig(timeout_s=2.0, destinations=LOOPBACK_ALLOWED)
PUBLIC = "93.184.216.34"


class FakeResolver:
    """Answers host names from a table, and remembers the questions."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


class FakeNetwork:
    """An httpx transport that records each request and answers as told, per address."""

    def __init__(self, answer: Callable[[httpx.Request], Awaitable[httpx.Response]] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.answer(request) if self.answer else httpx.Response(200)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle), follow_redirects=False)


async def subscribe(program: ProgramFixture, url: str, clock: ManualClock, policy: DestinationPolicy) -> str:
    made = await webhooks.create_endpoint(program.id, url, [EventType.CUSTOMER_ENROLLED], "tests", clock, policy)
    return made.endpoint.id


async def test_a_host_name_of_loopback_fails_every_attempt_and_is_never_sent_to(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    config = DispatchConfig(timeout_s=2.0, retry=RetryPolicy(base_delay_s=1.0, max_delay_s=2.0), disable_after=2)
    async with receiver() as hooks, new_client(config) as client:
        endpoint_id = await subscribe(program, f"http://localhost:{hooks.port}/hooks", clock, DestinationPolicy())
        await enrol(program.id, "ann", clock)
        first = await dispatch_program(program.id, clock, config, client)
        assert (first.delivered, first.failed_attempts) == (0, 1)
        [row] = await delivery_rows(owner_connection, endpoint_id)
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, None)
        assert re.fullmatch(r"destination address (127\.0\.0\.1|::1) is not allowed", row["last_error"])

        clock.advance(timedelta(seconds=2))  # the normal retry, refused again: the endpoint is disabled
        second = await dispatch_program(program.id, clock, config, client)
        assert (second.failed_attempts, second.endpoints_disabled) == (1, 1)
    endpoint = await webhooks.get_endpoint(program.id, endpoint_id)
    assert not endpoint.enabled and endpoint.disabled_reason is not None
    assert "is not allowed" in endpoint.disabled_reason
    assert hooks.requests == []


async def test_with_private_destinations_allowed_loopback_by_name_is_delivered(
    program: ProgramFixture, clock: ManualClock
) -> None:
    async with receiver() as hooks, new_client(LOOPBACK_OK) as client:
        # localhost may resolve to ::1 first: the receiver is on 127.0.0.1, the next address
        await subscribe(program, f"http://localhost:{hooks.port}/hooks", clock, LOOPBACK_ALLOWED)
        await enrol(program.id, "ann", clock)
        assert (await dispatch_program(program.id, clock, LOOPBACK_OK, client)).delivered == 1
    [request] = hooks.requests
    assert request.headers["host"] == f"localhost:{hooks.port}"


async def test_the_request_goes_to_the_resolved_address_with_the_host_name_in_host(
    program: ProgramFixture, clock: ManualClock
) -> None:
    # crm.example.test exists only in this resolver: had anything resolved it again, the send would fail
    resolver = FakeResolver({"crm.example.test": ["127.0.0.1"]})
    async with receiver() as hooks, new_client(LOOPBACK_OK) as client:
        await subscribe(program, f"http://crm.example.test:{hooks.port}/hooks", clock, LOOPBACK_ALLOWED)
        await enrol(program.id, "ann", clock)
        report = await dispatch_program(program.id, clock, LOOPBACK_OK, client, resolver=resolver)
        assert report.delivered == 1
    [request] = hooks.requests
    assert request.headers["host"] == f"crm.example.test:{hooks.port}"
    assert request.path == "/hooks"
    assert resolver.asked == [("crm.example.test", hooks.port)]


async def test_a_host_that_rebinds_to_a_private_address_is_refused_at_send_time(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    resolver = FakeResolver({"crm.example.com": [PUBLIC]})
    network = FakeNetwork()
    async with network.client() as client:
        endpoint_id = await subscribe(program, "https://crm.example.com/hooks?shop=1", clock, DestinationPolicy())
        await enrol(program.id, "ann", clock)
        assert (await dispatch_program(program.id, clock, PUBLIC_ONLY, client, resolver=resolver)).delivered == 1
        [sent] = network.requests
        assert str(sent.url) == f"https://{PUBLIC}/hooks?shop=1"  # to the checked address itself
        assert sent.headers["host"] == "crm.example.com"
        assert sent.extensions["sni_hostname"] == "crm.example.com"  # TLS for the name

        resolver.answers["crm.example.com"] = ["10.0.0.5"]  # the next answer points inside
        await enrol(program.id, "bob", clock)
        report = await dispatch_program(program.id, clock, PUBLIC_ONLY, client, resolver=resolver)
        assert (report.delivered, report.failed_attempts) == (0, 1)
        resolver.answers["crm.example.com"] = [PUBLIC, "169.254.169.254"]  # one bad answer is enough
        clock.advance(timedelta(seconds=2))
        assert (await dispatch_program(program.id, clock, PUBLIC_ONLY, client, resolver=resolver)).failed_attempts == 1
    assert len(network.requests) == 1
    rows = await delivery_rows(owner_connection, endpoint_id)
    assert [(row["status"], row["last_error"]) for row in rows] == [
        ("delivered", None),
        ("pending", "destination address 169.254.169.254 is not allowed"),
    ]


async def test_the_next_address_is_tried_when_one_refuses_the_connection(
    program: ProgramFixture, clock: ManualClock
) -> None:
    async def refuse_the_first(request: httpx.Request) -> httpx.Response:
        if request.url.host == "2606:4700::1111":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(204)

    resolver = FakeResolver({"crm.example.com": ["2606:4700::1111", PUBLIC]})
    network = FakeNetwork(refuse_the_first)
    async with network.client() as client:
        await subscribe(program, "http://crm.example.com:8080/hooks", clock, DestinationPolicy())
        await enrol(program.id, "ann", clock)
        assert (await dispatch_program(program.id, clock, PUBLIC_ONLY, client, resolver=resolver)).delivered == 1
    assert [str(request.url) for request in network.requests] == [
        "http://[2606:4700::1111]:8080/hooks",
        f"http://{PUBLIC}:8080/hooks",
    ]
    assert {request.headers["host"] for request in network.requests} == {"crm.example.com:8080"}
    assert all("sni_hostname" not in request.extensions for request in network.requests)  # plain http


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("https://nowhere.example.com/hooks", "could not resolve nowhere.example.com: Name or service not known"),
        ("http://crm.example.com/hooks", "url must be an absolute https:// URL"),  # registered before https-only
        ("https://10.0.0.5/hooks", "destination address 10.0.0.5 is not allowed"),  # before the flag was turned off
    ],
)
async def test_what_the_rules_refuse_now_is_refused_at_send_time(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection, url: str, error: str
) -> None:
    resolver = FakeResolver({"crm.example.com": [PUBLIC]})
    network = FakeNetwork()
    config = DispatchConfig(timeout_s=2.0, destinations=DestinationPolicy(https_only=True))
    async with network.client() as client:
        endpoint_id = await subscribe(program, url, clock, DestinationPolicy(allow_private=True))
        await enrol(program.id, "ann", clock)
        assert (await dispatch_program(program.id, clock, config, client, resolver=resolver)) == DispatchReport(
            published=1, failed_attempts=1
        )
    assert network.requests == []
    [row] = await delivery_rows(owner_connection, endpoint_id)
    assert row["last_error"] == error


async def test_a_redirect_is_not_followed(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    async def redirect(_: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"location": "http://169.254.169.254/latest/meta-data/"})

    network = FakeNetwork(redirect)
    following = httpx.AsyncClient(transport=httpx.MockTransport(network.handle), follow_redirects=True)
    async with following as client:  # even a client that would follow them
        endpoint_id = await subscribe(program, f"https://{PUBLIC}/hooks", clock, DestinationPolicy())
        await enrol(program.id, "ann", clock)
        assert (await dispatch_program(program.id, clock, PUBLIC_ONLY, client)).failed_attempts == 1
    assert [str(request.url) for request in network.requests] == [f"https://{PUBLIC}/hooks"]
    [row] = await delivery_rows(owner_connection, endpoint_id)
    assert (row["last_status_code"], row["last_error"]) == (307, "HTTP 307")


def test_the_settings_reach_the_dispatcher() -> None:
    assert DispatchConfig.from_settings(load_settings({})).destinations == DestinationPolicy()
    flags = {"LOYALTY_WEBHOOK_ALLOW_PRIVATE": "true", "LOYALTY_WEBHOOK_HTTPS_ONLY": "yes"}
    destinations = DispatchConfig.from_settings(load_settings(flags)).destinations
    assert destinations == DestinationPolicy(allow_private=True, https_only=True)


# --- TLS to a pinned address, with a certificate for the host name only ---------------------


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A test CA and a server certificate for crm.test alone (no IP address in it), made with
    the openssl command (on every machine the suite runs on; a missing one fails the test)."""
    folder = tmp_path_factory.mktemp("tls")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    ca = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]
    openssl("req", "-x509", "-new", *key, *ca, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=CA")
    openssl("req", "-new", *key, "-keyout", "crm.key", "-out", "crm.csr", "-subj", "/CN=crm.test")
    (folder / "crm.ext").write_text(
        "subjectAltName=DNS:crm.test\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    signing = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "crm.ext"]
    openssl("x509", "-req", "-in", "crm.csr", *signing, "-out", "crm.pem")
    return Certificates(ca=folder / "ca.pem", cert=folder / "crm.pem", key=folder / "crm.key")


async def test_tls_to_the_pinned_address_checks_the_certificate_against_the_host_name(
    program: ProgramFixture, clock: ManualClock, certificates: Certificates, owner_connection: asyncpg.Connection
) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certificates.cert, certificates.key)
    names: list[str | None] = []
    server.sni_callback = lambda _, name, __: names.append(name)
    # as the dispatcher's own client (new_client), trusting the test CA
    trusting = ssl.create_default_context(cafile=str(certificates.ca))
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    resolver = FakeResolver({"crm.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    async with receiver(tls=server) as hooks, httpx.AsyncClient(verify=trusting, limits=no_reuse) as client:
        await subscribe(program, f"https://crm.test:{hooks.port}/hooks", clock, LOOPBACK_ALLOWED)
        await enrol(program.id, "ann", clock)
        assert (await dispatch_program(program.id, clock, LOOPBACK_OK, client, resolver=resolver)).delivered == 1
        [request] = hooks.requests
        assert request.headers["host"] == f"crm.test:{hooks.port}"
        assert names == ["crm.test"]

        # the same address under a name the certificate does not cover: refused by the check
        other = await subscribe(program, f"https://other.test:{hooks.port}/hooks", clock, LOOPBACK_ALLOWED)
        await enrol(program.id, "bob", clock)
        report = await dispatch_program(program.id, clock, LOOPBACK_OK, client, resolver=resolver)
        assert (report.delivered, report.failed_attempts) == (1, 1)  # crm.test gets bob's event
    assert len(hooks.requests) == 2 and names.count("other.test") == 1
    [row] = await delivery_rows(owner_connection, other)
    assert "certificate is not valid for 'other.test'" in row["last_error"]
