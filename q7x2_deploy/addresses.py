"""Host addresses: which spellings are accepted, which are loopback, which are the same host.

An address becomes MASTER_ADDR, an SSH target and a line of the rendered host script, so it is
either a plain IP address a peer can connect to or a DNS name (RFC 1123), nothing else.
"""

from __future__ import annotations

import ipaddress
import re

from q7x2_runtime.safe_text import show

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# A last label of digits (or 0x... hex) is how inet_aton spells IPv4 (127.1, 2130706433,
# 0x7f000001, 0177.0.0.1): no top-level domain is numeric (RFC 3696 §2), so such a "name" is a
# mistyped or obfuscated IP address, never a DNS name.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
# The names /etc/hosts maps to loopback on Debian and Red Hat, and RFC 6761's .localhost.
LOOPBACK_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "localhost4", "localhost4.localdomain4", "localhost6", "localhost6.localdomain6", "ip6-localhost", "ip6-loopback"}
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # ::ffff:10.0.0.1 is the IPv4 host 10.0.0.1 (so is its loopback, its duplicate, ...).
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def check_address(v: str) -> str:
    """v if it is an IP address a peer can connect to or a DNS name; else ValueError."""
    if "%" in v:
        raise ValueError(
            f"{show(v)} has an IPv6 scope id (%...): a link-local address means a different link on every host; "
            "give a global or unique-local address"
        )
    ip = _ip(v)
    if ip is not None:
        if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
            raise ValueError(f"{show(v)} is an unspecified ('any') address, not one a peer can connect to")
        if ip.is_multicast:
            raise ValueError(f"{show(v)} is a multicast address, not a host's address")
        if ip == _BROADCAST:
            raise ValueError(f"{show(v)} is the broadcast address, not a host's address")
        if isinstance(ip, ipaddress.IPv4Address) and ip.is_reserved:
            raise ValueError(f"{show(v)} is in the reserved range 240.0.0.0/4, not a host's address")
        if isinstance(ip, ipaddress.IPv6Address) and int(ip) >> 32 == 0 and not ip.is_loopback:
            raise ValueError(f"{show(v)} is a deprecated IPv4-compatible IPv6 address; write the IPv4 address itself")
        return v
    if len(v) > 253 or not _DNS_NAME.fullmatch(v):
        raise ValueError(f"{show(v)} is neither an IP address nor a DNS name")
    if _NUMERIC_LABEL.fullmatch(v.rstrip(".").rsplit(".", 1)[-1]):
        raise ValueError(f"{show(v)} is not a valid IPv4 address (four numbers 0-255, no leading zeros) and numbers are not a DNS name")
    return v


def address_key(address: str) -> str:
    """One spelling per host, to find duplicates: 10.0.0.1 == ::ffff:10.0.0.1, names ignore case."""
    ip = _ip(address)
    if ip is not None:
        return str(ip)
    return address.lower().rstrip(".")


# RFC 6052's well-known NAT64 prefix: 64:ff9b::7f00:1 is 127.0.0.1 behind a translator.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_loopback(address: str) -> bool:
    name = address.lower().rstrip(".")
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    ip = _ip(address)
    if ip is None:
        return False
    # IPv6 spellings that embed an IPv4 address (6to4, NAT64) are loopback if that one is.
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.sixtofour is not None and ip.sixtofour.is_loopback:
            return True
        if ip in _NAT64 and ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF).is_loopback:
            return True
    return ip.is_loopback
