"""Whose address a request comes from, behind load balancers (``trusted_proxies``).

A client may write anything into ``X-Forwarded-For``; only what a proxy keygate trusts
appended to it is true. So, as aiohttp-remotes' ``XForwardedStrict`` and nginx's
``real_ip_recursive`` do, the header is read from the right, where each trusted hop
wrote the address of the one before it:

* from a peer that is not a trusted proxy, the header is ignored: the client is the
  peer, and the ``X-Forwarded-For`` sent upstream is the peer alone (a client-sent
  value never reaches the upstream);
* from a trusted peer, entries are taken from the right while they are trusted
  proxies; the first untrusted one is the client. An entry that is not an address
  (``unknown``, garbage, a zone id) ends the walk at the last trusted hop, because
  nobody vouched for what lies left of it — the client is never a string the client
  chose. The walk stops after ``MAX_HOPS`` entries however long the header is.
* the ``X-Forwarded-For`` sent upstream is that chain — client, trusted hops, peer —
  written as plain addresses (ports dropped, IPv4-mapped IPv6 as IPv4). Entries left of
  the client are claims nobody vouched for; they are dropped, so that an upstream
  reading the leftmost entry (as most do) sees the client keygate authorized, and a
  client cannot make the header grow.

``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are taken from a trusted peer (it
terminated TLS and saw the client's ``Host``), the rightmost value, which the nearest
proxy wrote, if it is well-formed; otherwise, and from anyone else, keygate sends its
own. Routing never looks at them: it uses the ``Host`` keygate received.

Whether the client came over TLS, which decides the session cookie's name on every
port, is :func:`client_over_tls`: its own connection to keygate is TLS, or the peer is a
trusted proxy whose ``X-Forwarded-Proto`` says ``https``. The RFC 7239 ``Forwarded``
header is not read for it (nor for anything else): the proxies keygate is deployed
behind write ``X-Forwarded-*`` and pass a client's ``Forwarded`` on untouched (Traefik's
ForwardAuth sends every header the client sent), so from a trusted peer it would still be
the client's word. A proxy vouches for the headers it writes, not for every header it
forwards; aiohttp-remotes likewise reads one family per deployment (``ForwardedStrict``
or ``XForwardedStrict``), never both.

Nothing here does I/O; verdicts per address string are memoised (bounded, since
clients choose the strings).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from multidict import MultiMapping

MAX_HOPS = 32
# '[' + the longest IPv6 text (45, with an embedded IPv4) + ']:65535'; longer is garbage
_LONGEST_ENTRY = 53
_PORT = re.compile(r"[0-9]{1,5}")
_HOST = re.compile(r"(?:[A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}\.?(?::[0-9]{1,5})?"
                   r"|\[[0-9A-Fa-f:.]{2,45}\](?::[0-9]{1,5})?")
_PROTOS = frozenset({"http", "https"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Forwarding(NamedTuple):
    """The client's address as keygate trusts it, and the ``X-Forwarded-*`` values to
    send upstream."""

    client: str
    forwarded_for: str
    proto: str
    host: str


def parse_address(entry: str) -> Address | None:
    """An ``X-Forwarded-For`` entry as an address: ``1.2.3.4``, ``1.2.3.4:80``, ``::1``,
    ``[::1]`` or ``[::1]:80``; IPv4-mapped IPv6 as the IPv4 address; None for anything
    else (including zone ids such as ``fe80::1%eth0``)."""
    entry = entry.strip()
    if not entry or len(entry) > _LONGEST_ENTRY or "%" in entry:
        return None
    if entry[0] == "[":
        entry, bracket, port = entry[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and _PORT.fullmatch(port, 1))):
            return None
    elif entry.count(":") == 1:
        entry, _, port = entry.partition(":")
        if not _PORT.fullmatch(port):
            return None
    try:
        address = ipaddress.ip_address(entry)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The ``trusted_proxies`` networks, and the walk described in the module docstring.
    Empty (false) when none are configured: then callers skip all of this."""

    def __init__(self, networks: Iterable[Network], memory: int = 4096):
        self.networks = tuple(networks)
        self.memory = memory
        self._hops: dict[str, tuple[str, bool] | None] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (a connection's remote address) is a trusted proxy."""
        hop = self.hop(peer)
        return hop is not None and hop[1]

    def hop(self, entry: str) -> tuple[str, bool] | None:
        """``entry`` as (plain address, whether it is a trusted proxy), or None if it is
        not an address. Memoised per string; entries are short (longer is garbage)."""
        try:
            return self._hops[entry]
        except KeyError:
            pass
        address = parse_address(entry)
        verdict = None
        if address is not None:
            verdict = (str(address), any(address in network for network in self.networks))
        if len(self._hops) >= self.memory:
            self._hops.clear()
        if len(entry) <= _LONGEST_ENTRY:
            self._hops[entry] = verdict
        return verdict

    def client_address(self, peer: str, forwarded_for: Sequence[str]) -> tuple[str, str]:
        """(the client's address, the ``X-Forwarded-For`` value to send upstream) for a
        connection from ``peer`` carrying these ``X-Forwarded-For`` header values."""
        peer_hop = self.hop(peer)
        if peer_hop is None or not peer_hop[1]:
            return peer, peer
        return self._walk(peer_hop[0], forwarded_for)

    def _walk(self, peer: str, forwarded_for: Sequence[str]) -> tuple[str, str]:
        client = peer
        chain = [peer]
        if forwarded_for:
            # rsplit: at most MAX_HOPS + 1 pieces, however long the header; a first piece
            # still holding commas is not an address and ends the walk
            for entry in reversed(",".join(forwarded_for).rsplit(",", MAX_HOPS)):
                hop = self.hop(entry)
                if hop is None:
                    break
                client, trusted = hop
                chain.append(client)
                if not trusted:
                    break
        chain.reverse()
        return client, ", ".join(chain)

    def forwarding(
        self, peer: str, headers: MultiMapping[str], scheme: str, host: str
    ) -> Forwarding:
        """All of it for one request. ``scheme`` and ``host`` are keygate's own: sent
        when the peer is not trusted, or sent nothing well-formed."""
        peer_hop = self.hop(peer)
        if peer_hop is None or not peer_hop[1]:
            return Forwarding(peer, peer, scheme, host)
        client, forwarded_for = self._walk(peer_hop[0], headers.getall("X-Forwarded-For", ()))
        proto = forwarded_proto(headers)
        forwarded_host = _rightmost(headers.getall("X-Forwarded-Host", ()))
        return Forwarding(
            client,
            forwarded_for,
            proto or scheme,
            forwarded_host if _is_host(forwarded_host) else host,
        )


def forwarded_proto(headers: MultiMapping[str]) -> str:
    """The scheme the nearest proxy says the client used (the rightmost
    ``X-Forwarded-Proto``, lower case): ``http``, ``https``, or '' when it says nothing
    well-formed. Only what a trusted proxy sends is to be believed."""
    proto = _rightmost(headers.getall("X-Forwarded-Proto", ())).lower()
    return proto if proto in _PROTOS else ""


def client_over_tls(headers: MultiMapping[str], *, secure: bool, trusted_peer: bool) -> bool:
    """Whether the client reached keygate, or the trusted proxy in front of it, over
    TLS: ``secure``, its own connection to keygate is TLS; or ``trusted_peer``, the
    connection comes from a trusted proxy, and that proxy's ``X-Forwarded-Proto``
    (:func:`forwarded_proto`) says ``https``. From any other peer the header is the
    client's word and counts for nothing. Every port asks this one question (the proxy
    and management ports with their connection's TLS and ``trusted_proxies``; the
    decision API with the front proxy's word alone, its own connection being the front
    proxy's): over TLS the session cookie is read by its ``__Host-`` name alone."""
    return secure or (trusted_peer and forwarded_proto(headers) == "https")


def _rightmost(values: Sequence[str]) -> str:
    """The last entry of a list-valued header: the one the nearest proxy wrote."""
    return values[-1].rsplit(",", 1)[-1].strip() if values else ""


def _is_host(value: str) -> bool:
    return 0 < len(value) <= 259 and _HOST.fullmatch(value) is not None
