"""Where webhooks may be sent: public addresses only, so an endpoint cannot reach into the
service's own network (loopback, private ranges, the cloud metadata service).

An address is `PUBLIC` (globally routable unicast: always allowed), `PRIVATE` (loopback,
private-use, shared CGNAT space, unique-local: allowed only when the deployment says so, for
development and on-premise receivers) or `NEVER` (unspecified, multicast, link-local,
metadata services, documentation, benchmarking, reserved: never a receiver). IPv6 forms that
carry an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by that address.

Pure: host names are resolved by the dispatcher, which judges every address they resolve to.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from urllib.parse import urlsplit

import msgspec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Reach(enum.Enum):
    """How far from the service an address is."""

    PUBLIC = "public"
    PRIVATE = "private"
    NEVER = "never"


class DestinationPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Which webhook URLs the service accepts and sends to."""

    allow_private: bool = False  # loopback, private-use, CGNAT and unique-local addresses too
    https_only: bool = False


PUBLIC_ONLY = DestinationPolicy()  # the default: public addresses, http or https


def _networks(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


_PRIVATE_V4 = _networks("10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
_NEVER_V4 = _networks(
    "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the host itself
    "169.254.0.0/16",  # link-local, where cloud metadata services answer
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation
    "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation
    "203.0.113.0/24",  # documentation
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the broadcast address
)
_PRIVATE_V6 = _networks("::1/128", "fc00::/7", "fec0::/10")  # loopback, unique-local, site-local
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NEVER_V6 = _networks(
    "2001::/23",  # IETF protocol assignments, Teredo among them
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Metadata services outside the link-local range (which is never allowed): Alibaba Cloud's
# in the CGNAT space, AWS's IPv6 one among unique-local addresses.
_METADATA = frozenset(ipaddress.ip_address(text) for text in ("100.100.100.200", "fd00:ec2::254"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 address leads to."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def reach(address: IPAddress) -> Reach:
    """How far from the service an address is: PUBLIC, PRIVATE or NEVER a destination."""
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))  # without a scope id (fe80::1%eth0)
        inner = embedded_ipv4(address)
        if inner is not None:
            return reach(inner)
        private, never, unicast_space = _PRIVATE_V6, _NEVER_V6, address in _GLOBAL_UNICAST_V6
    else:
        private, never, unicast_space = _PRIVATE_V4, _NEVER_V4, True  # multicast is in _NEVER_V4
    if address in _METADATA or any(address in network for network in never):
        return Reach.NEVER
    if any(address in network for network in private):
        return Reach.PRIVATE
    # is_global as a second opinion: the tables above are the rule, it may only refuse more
    return Reach.PUBLIC if unicast_space and address.is_global else Reach.NEVER


def address_allowed(address: IPAddress, policy: DestinationPolicy) -> bool:
    """Whether a webhook may be sent to this address."""
    found = reach(address)
    return found is Reach.PUBLIC or (found is Reach.PRIVATE and policy.allow_private)


def refused_address(address: IPAddress) -> str:
    """The error of a destination address that is not allowed."""
    return f"destination address {address} is not allowed"


def parse_address(text: str) -> IPAddress | None:
    """An IP address written in its canonical form ("10.0.0.1", "::1"), else None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


_NETLOC = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:@]+)(?::(?P<port>[0-9]{1,5}))?")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
# A host whose last label is a number is an IP address or nothing: "127.1", "2130706433" and
# "0x7f.0.0.1" are 127.0.0.1 to the system's resolver, so only the canonical form is taken.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[Xx][0-9A-Fa-f]*")


def _host_name_ok(host: str) -> bool:
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host.removesuffix(".").split(".")
    return (
        len(ascii_host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not _NUMERIC_LABEL.fullmatch(labels[-1])
    )


def url_problem(url: str, policy: DestinationPolicy) -> str | None:
    """Why a webhook URL is refused, or None: the scheme, no user name or password, a valid
    host, and an IP-literal host's address. A host name is judged when it is resolved."""
    expected = "an absolute https:// URL" if policy.https_only else "an absolute http:// or https:// URL"
    if any(char.isspace() or not char.isprintable() or char == "\\" for char in url):
        return f"url must be {expected} without spaces, control characters or backslashes"
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"url must be {expected}"
    if parts.scheme.lower() not in ({"https"} if policy.https_only else {"http", "https"}) or not parts.netloc:
        return f"url must be {expected}"
    if "@" in parts.netloc:
        return "url must not contain a user name or password"
    netloc = _NETLOC.fullmatch(parts.netloc)
    if netloc is None or (netloc["port"] is not None and not 0 < int(netloc["port"]) < 65536):
        return "url must name a host, and a port from 1 to 65535 if any"
    host = netloc["host"]
    address = parse_address(host[1:-1] if host.startswith("[") else host)
    if host.startswith("[") and not isinstance(address, ipaddress.IPv6Address):
        return f"url host {host} is not an IPv6 address"
    if address is None:
        return None if _host_name_ok(host) else f"url host {host} is not a valid host name or IP address"
    return None if address_allowed(address, policy) else refused_address(address)
