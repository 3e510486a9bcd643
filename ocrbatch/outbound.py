"""Requests to addresses that batches and events name (webhooks, SNS): public addresses only.

A webhook URL or an SNS SubscribeURL comes from whoever can create a batch or reach the event
endpoint, so these requests must not become a way into the network the server sits in. The
`OutboundPolicy` refuses loopback, private, link-local (cloud metadata services live there),
carrier-grade NAT, multicast and every other non-public address, unless an operator allows a
network (`[webhook] allow_networks`; SNS URLs must moreover be on SNS's own hosts,
`ocrbatch.service.sns`). It is applied twice: when a URL is accepted (`check_url`,
which resolves the host), and on every request, by the session `open_outbound_session` makes:
its resolver drops refused addresses, so the connection goes to an address that was checked and
DNS cannot swap it between the check and the connect; literal IPs are checked before the
request. A refused request raises `OutboundRefused`, which is neither retried nor mistaken for
an unreachable host.

Names reserved never to resolve (`.invalid`, `.test`, `.example`: RFC 2606 and 6761) are not
looked up at all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_middlewares import ClientHandlerType

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host -> its addresses (an empty list when it does not resolve)
Resolve = Callable[[str], Awaitable[list[str]]]

RESOLVE_TIMEOUT_S = 10.0
_NEVER_RESOLVED = (".invalid", ".test", ".example")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = tuple(
    ipaddress.ip_network(network) for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))
# What is refused, first match naming it; `is_global` is False for every other special range.
_REFUSED: tuple[tuple[Callable[[Address], bool], str], ...] = (
    (lambda ip: ip in _METADATA, "a cloud metadata address"),
    (lambda ip: ip.is_loopback, "a loopback address"),
    (lambda ip: ip.is_link_local, "a link-local address"),
    (lambda ip: ip.is_multicast, "a multicast address"),
    (lambda ip: ip in _CGNAT, "a carrier-grade NAT address"),
    (lambda ip: any(ip in network for network in _PRIVATE), "a private address"),
    (lambda ip: ip.is_unspecified, "the unspecified address"),
    (lambda ip: not ip.is_global, "a reserved address"),
)


class OutboundRefused(Exception):
    """A request to an address the outbound policy refuses; the message says which and why."""


class OutboundPolicy:
    """Which addresses requests named by batches may go to: public ones, and `allow_networks`."""

    def __init__(
        self, allow_networks: Iterable[str | Network] = (), *, resolve: Resolve | None = None
    ) -> None:
        self.allow_networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(network) if isinstance(network, str) else network
            for network in allow_networks
        )
        self._resolve = resolve or _system_resolve

    def refusal(self, address: str | Address) -> str | None:
        """Why a request may not go to `address` (what kind of address it is), or None if it may."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if any(ip in network for network in self.allow_networks):
            return None
        for judged in (_embedded_ipv4(ip), ip):
            if judged is not None and (why := next((why for bad, why in _REFUSED if bad(judged)), None)):
                return why
        return None
        return None

    def refused(self, host: str, address: str | Address) -> OutboundRefused | None:
        """The error for a request to `host` at `address`, or None when it may go there."""
        why = self.refusal(address)
        if why is None:
            return None
        shown = host if host == str(address) else f"{host} ({address})"
        return OutboundRefused(
            f"{shown} is {why}: requests go only to public addresses unless webhook.allow_networks lists them"
        )

    async def check_url(self, url: str) -> None:
        """Refuse `url` (`OutboundRefused`) when its host is, or resolves only to, refused
        addresses. A host that does not resolve now is not refused: the request will be checked
        again when it is made."""
        host = urlsplit(url).hostname
        if not host or "%" in host:
            raise OutboundRefused("the URL names no host, or a host with escapes (%)")
        addresses = [host] if _is_ip(host) else await self.addresses(host)
        refusals = [self.refused(host, address) for address in addresses]
        if refusals and all(refusals):
            raise next(refusal for refusal in refusals if refusal is not None)

    async def addresses(self, host: str) -> list[str]:
        """The addresses `host` resolves to (none for reserved names or when it does not)."""
        name = host.casefold().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            return ["127.0.0.1"]  # RFC 6761: always loopback, whatever a resolver says
        if name.endswith(_NEVER_RESOLVED):
            return []
        try:
            return await asyncio.wait_for(self._resolve(host), RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError):
            return []


def open_outbound_session(
    policy: OutboundPolicy,
    *,
    max_connections: int = 32,
    resolver: AbstractResolver | None = None,
    trust: ssl.SSLContext | None = None,
) -> aiohttp.ClientSession:
    """A session whose every request obeys `policy`: its addresses are looked up with `resolver`
    (the system's by default) and filtered, literal IPs are checked, and even a redirect followed
    by a caller that asks for it lands only where the policy allows. `trust` replaces the system's
    certificate authorities (a private trust root)."""
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        resolver=_PolicyResolver(policy, resolver or aiohttp.DefaultResolver()),
        ssl=trust if trust is not None else True,
    )

    async def literal_addresses(
        request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        host = request.url.raw_host or ""
        if _is_ip(host) and (refused := policy.refused(host, host.strip("[]"))) is not None:
            raise refused
        return await handler(request)

    return aiohttp.ClientSession(
        connector=connector,
        middlewares=(literal_addresses,),
        trust_env=False,  # no proxy from the environment: the policy must see the real destination
    )


class _PolicyResolver(AbstractResolver):
    """Resolves through `inner`, then drops the addresses the policy refuses."""

    def __init__(self, policy: OutboundPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [result for result in found if self._policy.refusal(result["host"]) is None]
        if not kept:
            refused = self._policy.refused(host, found[0]["host"]) if found else None
            raise refused or OutboundRefused(f"{host} resolves to no address")
        return kept

    async def close(self) -> None:
        await self._inner.close()


async def _system_resolve(host: str) -> list[str]:
    found = await asyncio.get_running_loop().getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))


def _embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), which is where it leads."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None or ip.sixtofour is not None:
        return ip.ipv4_mapped or ip.sixtofour
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
