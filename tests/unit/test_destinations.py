"""Which addresses and URLs webhooks may go to (no database, no network)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.destinations import (
    DestinationPolicy,
    Reach,
    address_allowed,
    embedded_ipv4,
    reach,
    url_problem,
)

PUBLIC_ONLY = DestinationPolicy()
PRIVATE_TOO = DestinationPolicy(allow_private=True)
HTTPS_ONLY = DestinationPolicy(https_only=True)

ADDRESSES = [
    # globally routable unicast
    ("8.8.8.8", Reach.PUBLIC),
    ("93.184.216.34", Reach.PUBLIC),
    ("1.1.1.1", Reach.PUBLIC),
    ("100.63.255.255", Reach.PUBLIC),  # just below the shared space
    ("100.128.0.0", Reach.PUBLIC),  # just above it
    ("172.15.255.255", Reach.PUBLIC),
    ("172.32.0.0", Reach.PUBLIC),
    ("2606:4700:4700::1111", Reach.PUBLIC),
    ("2a00:1450:4001:80b::200e", Reach.PUBLIC),
    ("::ffff:8.8.8.8", Reach.PUBLIC),  # IPv4-mapped public
    ("64:ff9b::808:808", Reach.PUBLIC),  # NAT64 of 8.8.8.8
    ("2002:808:808::1", Reach.PUBLIC),  # 6to4 of 8.8.8.8
    # the service's own networks: allowed only with LOYALTY_WEBHOOK_ALLOW_PRIVATE
    ("127.0.0.1", Reach.PRIVATE),
    ("127.255.255.254", Reach.PRIVATE),
    ("10.0.0.5", Reach.PRIVATE),
    ("172.16.0.1", Reach.PRIVATE),
    ("172.31.255.255", Reach.PRIVATE),
    ("192.168.1.1", Reach.PRIVATE),
    ("100.64.0.1", Reach.PRIVATE),  # shared (CGNAT)
    ("100.127.255.255", Reach.PRIVATE),
    ("::1", Reach.PRIVATE),
    ("fd00::1", Reach.PRIVATE),  # unique-local
    ("fc00::1", Reach.PRIVATE),
    ("fec0::1", Reach.PRIVATE),  # site-local (deprecated)
    ("::ffff:127.0.0.1", Reach.PRIVATE),  # IPv4-mapped loopback
    ("::ffff:10.0.0.5", Reach.PRIVATE),
    ("64:ff9b::a00:5", Reach.PRIVATE),  # NAT64 of 10.0.0.5
    ("2002:c0a8:101::1", Reach.PRIVATE),  # 6to4 of 192.168.1.1
    # never a receiver
    ("0.0.0.0", Reach.NEVER),  # noqa: S104 - an address under test, nothing binds
    ("0.1.2.3", Reach.NEVER),
    ("169.254.169.254", Reach.NEVER),  # cloud metadata
    ("169.254.170.2", Reach.NEVER),  # container metadata
    ("100.100.100.200", Reach.NEVER),  # a metadata service in the shared space
    ("fd00:ec2::254", Reach.NEVER),  # a metadata service among unique-local addresses
    ("192.0.0.8", Reach.NEVER),
    ("192.0.2.1", Reach.NEVER),  # documentation
    ("198.51.100.7", Reach.NEVER),
    ("203.0.113.9", Reach.NEVER),
    ("198.18.0.1", Reach.NEVER),  # benchmarking
    ("192.88.99.1", Reach.NEVER),  # 6to4 relay anycast
    ("224.0.0.1", Reach.NEVER),  # multicast
    ("239.255.255.250", Reach.NEVER),
    ("240.0.0.1", Reach.NEVER),  # reserved
    ("255.255.255.255", Reach.NEVER),
    ("::", Reach.NEVER),
    ("::127.0.0.1", Reach.NEVER),  # IPv4-compatible (deprecated)
    ("fe80::1", Reach.NEVER),  # link-local
    ("fe80::1%eth0", Reach.NEVER),
    ("ff02::1", Reach.NEVER),  # multicast
    ("2001:db8::1", Reach.NEVER),  # documentation
    ("3fff::1", Reach.NEVER),
    ("2001::1", Reach.NEVER),  # Teredo
    ("64:ff9b:1::1", Reach.NEVER),  # local-use NAT64
    ("100::1", Reach.NEVER),  # discard-only
    ("5f00::1", Reach.NEVER),  # SRv6 SIDs
    ("::ffff:169.254.169.254", Reach.NEVER),
    ("64:ff9b::a9fe:a9fe", Reach.NEVER),
    ("::ffff:0.0.0.0", Reach.NEVER),
]


@pytest.mark.parametrize(("text", "expected"), ADDRESSES, ids=[text for text, _ in ADDRESSES])
def test_the_reach_of_an_address(text: str, expected: Reach) -> None:
    address = ipaddress.ip_address(text)
    assert reach(address) is expected
    assert address_allowed(address, PUBLIC_ONLY) is (expected is Reach.PUBLIC)
    assert address_allowed(address, PRIVATE_TOO) is (expected is not Reach.NEVER)


def test_the_ipv4_inside_ipv6_forms() -> None:
    ten = ipaddress.IPv4Address("10.0.0.5")
    assert embedded_ipv4(ipaddress.IPv6Address("::ffff:10.0.0.5")) == ten
    assert embedded_ipv4(ipaddress.IPv6Address("64:ff9b::10.0.0.5")) == ten
    assert embedded_ipv4(ipaddress.IPv6Address("2002:a00:5::")) == ten
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1111")) is None


IPV4 = st.ip_addresses(v=4)
IPV6 = st.ip_addresses(v=6)


@given(IPV4)
def test_ipv6_forms_of_an_ipv4_address_have_its_reach(address: ipaddress.IPv4Address) -> None:
    value = int(address)
    forms = [
        ipaddress.IPv6Address(0xFFFF_0000_0000 | value),  # ::ffff:a.b.c.d
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | value),  # NAT64
        ipaddress.IPv6Address((0x2002 << 112) | (value << 80) | 1),  # 6to4
    ]
    assert [reach(form) for form in forms] == [reach(address)] * 3


@given(IPV4 | IPV6)
def test_what_is_allowed_without_the_flag_is_global_unicast(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    if address_allowed(address, PUBLIC_ONLY):
        judged = embedded_ipv4(address) or address if isinstance(address, ipaddress.IPv6Address) else address
        assert judged.is_global and not judged.is_multicast and not judged.is_loopback
        assert not judged.is_private and not judged.is_link_local and not judged.is_reserved
    # the flag only ever allows more
    assert address_allowed(address, PRIVATE_TOO) >= address_allowed(address, PUBLIC_ONLY)


NEVER_NETWORKS = ["0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "fe80::/10", "ff00::/8", "2001:db8::/32"]
PRIVATE_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "fc00::/7"]


@given(st.sampled_from(NEVER_NETWORKS + PRIVATE_NETWORKS), st.integers(min_value=0))
def test_no_address_of_the_services_networks_is_allowed_without_the_flag(cidr: str, offset: int) -> None:
    network = ipaddress.ip_network(cidr)
    address = network[offset % network.num_addresses]
    assert not address_allowed(address, PUBLIC_ONLY)
    assert address_allowed(address, PRIVATE_TOO) is (cidr in PRIVATE_NETWORKS and reach(address) is Reach.PRIVATE)


ACCEPTED = [
    "https://crm.example.com/hooks",
    "https://CRM.Example.com:8443/hooks?shop=1#top",
    "http://crm.example.com/hooks",
    "https://hooks.eu-1.example.co.uk./x",
    "https://bücher.example/hooks",
    "https://my_host.example.com/",
    "https://8.8.8.8/hooks",
    "https://[2606:4700:4700::1111]:443/hooks",
    "http://localhost:8080/hooks",  # a host name: judged by what it resolves to, at send time
    "https://h.example/x?next=http://127.0.0.1/",  # in the query, not the host
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_urls_that_are_accepted(url: str) -> None:
    assert url_problem(url, PUBLIC_ONLY) is None


REFUSED = [
    ("ftp://crm.example.com/x", "url must be an absolute http:// or https:// URL"),
    ("crm.example.com/hooks", "url must be an absolute http:// or https:// URL"),
    ("https:///hooks", "url must be an absolute http:// or https:// URL"),
    ("https://crm.example .com/", "without spaces, control characters or backslashes"),
    ("https://crm.example.com\\@127.0.0.1/", "without spaces, control characters or backslashes"),
    ("https://crm.example.com/\x00", "without spaces, control characters or backslashes"),
    ("https://user:pw@crm.example.com/", "url must not contain a user name or password"),
    ("https://crm.example.com@10.0.0.5/", "url must not contain a user name or password"),
    ("https://@crm.example.com/", "url must not contain a user name or password"),
    ("https://crm.example.com:0/", "url must name a host, and a port from 1 to 65535 if any"),
    ("https://crm.example.com:99999/", "url must name a host, and a port from 1 to 65535 if any"),
    ("https://crm.example.com:/", "url must name a host, and a port from 1 to 65535 if any"),
    ("https://[fe80::1%25eth0]/", "url must name a host, and a port from 1 to 65535 if any"),
    ("https://[::1]x/", "url must name a host, and a port from 1 to 65535 if any"),
    ("https://2130706433/", "url host 2130706433 is not a valid host name or IP address"),
    ("https://127.1/", "url host 127.1 is not a valid host name or IP address"),
    ("https://0x7f.0.0.1/", "url host 0x7f.0.0.1 is not a valid host name or IP address"),
    ("https://0177.0.0.1/", "url host 0177.0.0.1 is not a valid host name or IP address"),
    ("https://127.0.0.1./", "url host 127.0.0.1. is not a valid host name or IP address"),
    ("https://-crm.example.com/", "url host -crm.example.com is not a valid host name or IP address"),
    ("https://crm..example.com/", "url host crm..example.com is not a valid host name or IP address"),
    ("https://127.0.0.1/hooks", "destination address 127.0.0.1 is not allowed"),
    ("https://[::ffff:7f00:1]/hooks", "destination address ::ffff:7f00:1 is not allowed"),
    ("https://[fd00:ec2::254]/", "destination address fd00:ec2::254 is not allowed"),
    ("http://169.254.169.254/latest/meta-data/", "destination address 169.254.169.254 is not allowed"),
]


@pytest.mark.parametrize(("url", "problem"), REFUSED)
def test_urls_that_are_refused_say_why(url: str, problem: str) -> None:
    found = url_problem(url, PUBLIC_ONLY)
    assert found is not None and problem in found


def test_the_flags() -> None:
    assert url_problem("http://10.0.0.5:8080/hooks", PRIVATE_TOO) is None
    assert url_problem("http://[::1]:8080/hooks", PRIVATE_TOO) is None
    assert url_problem("http://169.254.169.254/", PRIVATE_TOO) == "destination address 169.254.169.254 is not allowed"
    assert url_problem("http://crm.example.com/hooks", HTTPS_ONLY) == "url must be an absolute https:// URL"
    assert url_problem("HTTPS://crm.example.com/hooks", HTTPS_ONLY) is None


@given(st.text(max_size=60))
def test_any_text_is_judged_without_raising(text: str) -> None:
    for prefix in ("https://", "http://[", ""):
        problem = url_problem(prefix + text, PUBLIC_ONLY)
        assert problem is None or problem.startswith(("url", "destination address"))
