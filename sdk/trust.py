"""Who the SDK trusts with a session id: inbound peers and outbound destinations.

A ``session.id`` in W3C baggage is a claim made by whoever sent the request. By default the SDK
adopts none that arrive (`accept_session_from`: ``none``) and sends the current session's id
only to destinations on the application's own networks (`send_session_to`: ``private``). Both
settings take a list of rules, parsed here once when the config is resolved:

- ``all`` — any peer or destination;
- ``none`` — nobody (only on its own);
- ``private`` — loopback, private (RFC 1918, RFC 4193), link-local and carrier-grade NAT
  addresses, and for destinations also single-label host names (``http://orders:8080``, a
  service name on a cluster network) and ``localhost``;
- ``loopback`` — 127.0.0.0/8, ::1 and ``localhost``;
- a network in CIDR form (``10.1.0.0/16``) or one address;
- for destinations, a host name (``api.internal.example``) or a domain suffix (``*.example``).

This module holds no state and imports nothing of the SDK: the config layer parses with it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

if TYPE_CHECKING:  # ipaddress is imported when rules are parsed or used, not by `import sdk`
    import ipaddress

IPNetwork: TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"
IPAddress: TypeAlias = "ipaddress.IPv4Address | ipaddress.IPv6Address"

KEYWORDS = ("all", "none", "private", "loopback")
_HOST_NAME = r"(?:\*\.)?[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?"


@functools.cache
def _cgnat() -> IPNetwork:
    import ipaddress

    return ipaddress.ip_network("100.64.0.0/10")


class TrustRules(NamedTuple):
    """Parsed trust rules (see the module docstring); `TrustRules.parse` builds them."""

    everyone: bool = False
    private: bool = False
    loopback: bool = False
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, rules: Iterable[str], *, hosts_allowed: bool) -> TrustRules:
        """Rules from their text form; ValueError names the first rule that is not understood."""
        everyone = private = loopback = False
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        suffixes: list[str] = []
        items = [str(rule).strip().lower() for rule in rules]
        items = [item for item in items if item]
        if "none" in items and len(items) > 1:
            raise ValueError("'none' cannot be combined with other rules")
        for item in items:
            if item == "all" or item == "*":
                everyone = True
            elif item == "none":
                pass
            elif item == "private":
                private = True
            elif item == "loopback":
                loopback = True
            else:
                network = _network(item)
                if network is not None:
                    networks.append(network)
                elif hosts_allowed and re.fullmatch(_HOST_NAME, item):
                    if item.startswith("*."):
                        suffixes.append(item[1:].rstrip("."))
                    else:
                        hosts.add(item.rstrip("."))
                else:
                    what = "a keyword (all, none, private, loopback) or a network (CIDR or address)"
                    if hosts_allowed:
                        what += ", a host name or *.domain"
                    raise ValueError(f"{item!r} is not {what}")
        return cls(everyone, private, loopback, tuple(networks), frozenset(hosts), tuple(suffixes))

    @property
    def nobody(self) -> bool:
        """True when no peer or destination can match."""
        return not (
            self.everyone or self.private or self.loopback or self.networks or self.hosts or self.suffixes
        )

    def describe(self) -> str:
        """The rules as text, as the settings take them."""
        if self.everyone:
            return "all"
        parts = [name for name, on in (("private", self.private), ("loopback", self.loopback)) if on]
        parts += [str(n) for n in self.networks]
        parts += sorted(self.hosts)
        parts += [f"*{s}" for s in self.suffixes]
        return ",".join(parts) or "none"

    def allows_peer(self, address: str | None) -> bool:
        """Whether an inbound request from `address` (an IP address; None: unknown) is trusted."""
        if self.everyone:
            return True
        if address is None:
            return False
        ip = _address(address)
        if ip is None:
            return False
        return self._allows_ip(ip)

    def allows_destination(self, host: str | None) -> bool:
        """Whether an outgoing request to `host` (a name or an IP address; None: unknown) may carry the id."""
        if self.everyone:
            return True
        if not host:
            return False
        host = host.strip().lower().rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        ip = _address(host)
        if ip is not None:
            return self._allows_ip(ip)
        if host == "localhost" or host.endswith(".localhost"):
            return self.private or self.loopback
        if self.private and "." not in host:
            return True  # a single-label name: a service on the application's own network
        if host in self.hosts:
            return True
        return any(host.endswith(suffix) for suffix in self.suffixes)

    def _allows_ip(self, ip: IPAddress) -> bool:
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            ip = mapped
        if (self.loopback or self.private) and ip.is_loopback:
            return True
        if self.private and (ip.is_private or ip.is_link_local or ip in _cgnat()) and not ip.is_unspecified:
            return True
        return any(ip in network for network in self.networks if network.version == ip.version)


def _network(text: str) -> IPNetwork | None:
    import ipaddress

    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _address(text: str) -> IPAddress | None:
    import ipaddress

    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


NOBODY = TrustRules()
PRIVATE = TrustRules(private=True)
