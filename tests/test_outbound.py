"""The outbound policy: requests that batches name reach public addresses only, unless allowed."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import BaseTestServer, TestServer

from ocrbatch.outbound import OutboundPolicy, OutboundRefused, open_outbound_session


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("10.0.0.5", "a private address"),
        ("172.16.3.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fc00::1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("127.200.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("169.254.10.10", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("100.64.1.1", "a carrier-grade NAT address"),
        ("224.0.0.251", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("64:ff9b::7f00:1", "a loopback address"),
        ("2002:a00:5::", "a private address"),
        ("0.0.0.0", "the unspecified address"),
        ("::", "the unspecified address"),
        ("192.0.2.10", "a reserved address"),
        ("240.0.0.1", "a reserved address"),
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_each_kind_of_non_public_address_is_refused_by_name(address: str, kind: str | None) -> None:
    """Metadata, private, loopback, link-local, CGNAT, multicast, unspecified and reserved
    addresses are refused, each named for what it is, and so are IPv6 addresses that carry one
    (IPv4-mapped, NAT64, 6to4); public addresses pass."""
    assert OutboundPolicy().refusal(address) == kind


def test_allowed_networks_open_exactly_what_they_list() -> None:
    """`allow_networks` lets its networks through, and nothing next to them."""
    policy = OutboundPolicy(["127.0.0.0/8", "10.1.0.0/16"])
    assert policy.refusal("127.0.0.1") is None
    assert policy.refusal("10.1.200.3") is None
    assert policy.refusal("10.2.0.1") == "a private address"
    assert policy.refusal("169.254.169.254") == "a cloud metadata address"


class Names:
    """A resolver of host names from a table, counting the look-ups (the network is not asked)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        return list(self.table.get(host, []))


async def test_a_url_is_checked_on_its_host_and_on_what_the_host_resolves_to() -> None:
    """Literal addresses are judged as they are; `localhost` names are loopback; names by their
    addresses, refused only when every one is refused; escaped hosts are refused; names that do
    not resolve (now) and reserved names (never asked) pass."""
    names = Names({"inside.corp": ["10.0.0.5"], "mixed.org": ["10.0.0.6", "93.184.215.14"]})
    policy = OutboundPolicy(resolve=names)
    for url, reason in [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
        ("https://10.0.0.5/hook", "10.0.0.5 is a private address"),
        ("http://[::1]:8080/hook", "::1 is a loopback address"),
        ("https://inside.corp/hook", "inside.corp (10.0.0.5) is a private address"),
        ("http://localhost./hook", "localhost. (127.0.0.1) is a loopback address"),
        ("http://api.localhost/hook", "api.localhost (127.0.0.1) is a loopback address"),
        ("http://%31%32%37.0.0.1/hook", "a host with escapes"),
    ]:
        with pytest.raises(OutboundRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
            await policy.check_url(url)
    await policy.check_url("https://mixed.org/hook")
    await policy.check_url("https://not-yet.example.com/hook")
    await policy.check_url("https://hooks.example/hook")
    await policy.check_url("https://receiver.invalid/hook")
    assert names.asked == ["inside.corp", "mixed.org", "not-yet.example.com"]


class Swapping(AbstractResolver):
    """A resolver answering `addresses` for every name (a DNS server an attacker controls)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)
            for address in self.addresses
        ]

    async def close(self) -> None:
        return None


Receiving = tuple[BaseTestServer, list[str]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiving]:
    """A receiver on 127.0.0.1 recording the paths it was sent to."""
    reached: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        yield server, reached


async def test_requests_to_refused_addresses_are_never_sent(receiver: Receiving) -> None:
    """Through the outbound session, a loopback receiver is unreachable by its address, by
    `localhost`, and by a name whose DNS answer points at it, even after the name was checked
    while it pointed elsewhere; allowing loopback lets the same requests through."""
    server, reached = receiver
    port = server.port
    dns = Swapping(["93.184.215.14"])
    policy = OutboundPolicy(resolve=Names({"rebind.example.com": ["93.184.215.14"]}))
    await policy.check_url(f"http://rebind.example.com:{port}/hook")  # public at validation...
    dns.addresses = ["127.0.0.1"]  # ...then the name is re-pointed at loopback
    async with open_outbound_session(policy, resolver=dns) as session:
        for url, shown in [
            (f"http://127.0.0.1:{port}/a", "127.0.0.1 is a loopback address"),
            (f"http://[::ffff:127.0.0.1]:{port}/b", "::ffff:7f00:1 is a loopback address"),
            (f"http://rebind.example.com:{port}/c", "rebind.example.com (127.0.0.1) is a loopback address"),
        ]:
            with pytest.raises(OutboundRefused) as refused:
                async with session.post(url, data=b"{}", allow_redirects=False):
                    pass
            assert shown in str(refused.value)
    async with open_outbound_session(OutboundPolicy()) as session:
        with pytest.raises(OutboundRefused, match=re.escape("localhost (127.0.0.1) is a loopback address")):
            async with session.get(f"http://localhost:{port}/d"):
                pass
    assert reached == []
    allowed = OutboundPolicy(["127.0.0.0/8"])
    async with open_outbound_session(allowed, resolver=dns) as session:
        for url in (f"http://127.0.0.1:{port}/e", f"http://rebind.example.com:{port}/f"):
            async with session.post(url, data=b"{}", allow_redirects=False) as response:
                assert response.status == 200
    assert reached == ["/e", "/f"]


async def test_a_followed_redirect_still_obeys_the_policy(receiver: Receiving) -> None:
    """Even a caller that asks for redirects cannot be moved by one to a refused address: the
    policy judges every hop (here only 127.0.0.2 is allowed; the redirect points at 127.0.0.1)."""
    server, reached = receiver

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{server.port}/internal")

    app = web.Application()
    app.router.add_post("/hook", moved)
    async with (
        TestServer(app, host="127.0.0.2", port=0) as redirector,
        open_outbound_session(OutboundPolicy(["127.0.0.2/32"])) as session,
    ):
        with pytest.raises(OutboundRefused, match=re.escape("127.0.0.1 is a loopback address")):
            await session.post(redirector.make_url("/hook"), data=b"{}", allow_redirects=True)
    assert reached == []


async def test_an_allowed_session_is_an_ordinary_client(receiver: Receiving) -> None:
    """What the policy allows goes through unchanged: its status and body, or a connection error."""
    server, reached = receiver
    async with open_outbound_session(OutboundPolicy(["127.0.0.1/32"])) as session:
        async with session.get(server.make_url("/x")) as response:
            assert (response.status, await response.text()) == (200, "ok")
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get("http://127.0.0.1:9/closed")
    assert reached == ["/x"]
