"""Unit tests of ``gateway.forwarded``: which address is the client's (pure, no I/O).

The attacker sends whatever ``X-Forwarded-For`` it likes, directly or through the load
balancer (which appends to it). Whatever it sends, the client address keygate uses must
be one that keygate or a trusted proxy saw, never a string the client chose; the value
sent upstream must start with that address and stay small.
"""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.forwarded import MAX_HOPS, TrustedProxies, client_over_tls, parse_address

LB = "10.0.0.5"  # the load balancer keygate trusts
TRUSTED = TrustedProxies(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "fd00::/8", "192.168.1.1")
)


def test_no_trusted_proxies_is_false_so_callers_skip_it():
    assert not TrustedProxies(())
    assert TRUSTED


@pytest.mark.parametrize(
    ("peer", "xff", "client", "sent"),
    [
        # an untrusted peer's header is ignored (replaced by the peer), spoof or not
        ("203.0.113.7", ["6.6.6.6"], "203.0.113.7", "203.0.113.7"),
        ("203.0.113.7", ["10.0.0.1"], "203.0.113.7", "203.0.113.7"),  # claims to be inside
        ("203.0.113.7", [], "203.0.113.7", "203.0.113.7"),
        # from the load balancer: the entry it appended is the client
        (LB, ["198.51.100.9"], "198.51.100.9", "198.51.100.9, 10.0.0.5"),
        # the client's own claim stays left of it: ignored, and not sent upstream
        (LB, ["6.6.6.6, 198.51.100.9"], "198.51.100.9", "198.51.100.9, 10.0.0.5"),
        (LB, ["6.6.6.6", "198.51.100.9"], "198.51.100.9", "198.51.100.9, 10.0.0.5"),
        # a chain of trusted proxies is walked through
        (LB, ["198.51.100.9, 10.1.1.1, 192.168.1.1"], "198.51.100.9",
         "198.51.100.9, 10.1.1.1, 192.168.1.1, 10.0.0.5"),
        # a trusted peer that forwarded nothing: the client is the peer (an inside caller)
        (LB, [], LB, LB),
        (LB, [""], LB, LB),
        # all trusted: the leftmost is the client
        (LB, ["10.9.9.9"], "10.9.9.9", "10.9.9.9, 10.0.0.5"),
        # ports and brackets as some proxies write them; IPv6; IPv4-mapped IPv6
        (LB, ["198.51.100.9:51234"], "198.51.100.9", "198.51.100.9, 10.0.0.5"),
        (LB, ["[2001:db8::1]:443"], "2001:db8::1", "2001:db8::1, 10.0.0.5"),
        (LB, ["[2001:db8::1]"], "2001:db8::1", "2001:db8::1, 10.0.0.5"),
        (LB, [" 2001:DB8:0::1 "], "2001:db8::1", "2001:db8::1, 10.0.0.5"),
        ("fd00::5", ["2001:db8::1, fd00::9"], "2001:db8::1", "2001:db8::1, fd00::9, fd00::5"),
        ("::ffff:10.0.0.5", ["::ffff:198.51.100.9"], "198.51.100.9", "198.51.100.9, 10.0.0.5"),
        ("::ffff:203.0.113.7", ["6.6.6.6"], "::ffff:203.0.113.7", "::ffff:203.0.113.7"),
        # garbage ends the walk at the last trusted hop: never the client's string
        (LB, ["unknown"], LB, LB),
        (LB, ["198.51.100.9, garbage"], LB, LB),
        (LB, ["198.51.100.9, 10.1.1.1, <script>"], LB, LB),
        (LB, ["garbage, 10.1.1.1"], "10.1.1.1", "10.1.1.1, 10.0.0.5"),
        (LB, ["1.2.3.4.5"], LB, LB),
        (LB, ["01.2.3.4"], LB, LB),  # leading zeros: octal to some parsers
        (LB, ["1.2.3.4:http"], LB, LB),
        (LB, ["1.2.3.4:\u00b2"], LB, LB),  # a digit, but not an ASCII one
        (LB, ["fe80::1%eth0"], LB, LB),  # zone ids are not client addresses
        (LB, ["[::1"], LB, LB),
        (LB, ["[::1]x"], LB, LB),
        (LB, ["1.2.3.4 5.6.7.8"], LB, LB),
        (LB, ["198.51.100.9,, 10.1.1.1"], "10.1.1.1", "10.1.1.1, 10.0.0.5"),
        # a peer that is not an address (a unix socket) is passed on as it is
        ("", ["6.6.6.6"], "", ""),
    ],
)
def test_client_address(peer, xff, client, sent):
    assert TRUSTED.client_address(peer, xff) == (client, sent)


def test_the_walk_stops_after_max_hops_however_long_the_header():
    inside = ", ".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(1000))
    client, sent = TRUSTED.client_address(LB, ["198.51.100.9, " + inside])
    last = 1000 - MAX_HOPS  # the entries walked are the rightmost MAX_HOPS
    assert client == f"10.0.{last // 250}.{last % 250 + 1}"
    assert len(sent.split(", ")) == MAX_HOPS + 1  # the hops walked and the peer


def test_huge_and_many_headers_cost_little_and_send_little():
    huge = ["6.6.6.6, " * 10_000 + "198.51.100.9"] * 50
    started = time.perf_counter()
    client, sent = TRUSTED.client_address(LB, huge)
    assert time.perf_counter() - started < 1.0  # generous: the property is "not quadratic"
    assert (client, sent) == ("198.51.100.9", "198.51.100.9, 10.0.0.5")
    one_huge_entry = ["x" * 1_000_000]
    assert TRUSTED.client_address(LB, one_huge_entry) == (LB, LB)


def test_memory_of_verdicts_is_bounded_whatever_addresses_clients_send():
    trusted = TrustedProxies([ipaddress.ip_network("10.0.0.0/8")], memory=16)
    for i in range(1000):
        assert trusted.client_address(LB, [f"198.51.{i // 256}.{i % 256}"])[0] == (
            f"198.51.{i // 256}.{i % 256}"
        )
        trusted.client_address(LB, ["y" * (i + 60)])  # long garbage is never remembered
        assert len(trusted._hops) <= 16


def test_parse_address_accepts_only_addresses():
    assert parse_address("1.2.3.4") == ipaddress.ip_address("1.2.3.4")
    assert parse_address("[::1]:80") == ipaddress.ip_address("::1")
    for garbage in ("", " ", "localhost", "1.2.3", "[1.2.3.4]x", "::1:80:", "1.2.3.4:99999999",
                    "1.2.3.4:", ":80", "[]", "[::1]:", "%", "1.2.3.4%0a"):
        assert parse_address(garbage) is None, garbage


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_proto_and_host_come_from_a_trusted_peer_only():
    sent = headers(("X-Forwarded-For", "198.51.100.9"), ("X-Forwarded-Proto", "https"),
                   ("X-Forwarded-Host", "api.example.com"))
    trusted = TRUSTED.forwarding(LB, sent, "http", "keygate.internal:8080")
    assert trusted == ("198.51.100.9", "198.51.100.9, 10.0.0.5", "https", "api.example.com")
    untrusted = TRUSTED.forwarding("203.0.113.7", sent, "http", "keygate.internal:8080")
    assert untrusted == ("203.0.113.7", "203.0.113.7", "http", "keygate.internal:8080")
    assert TrustedProxies(()).forwarding(LB, sent, "http", "h") == (LB, LB, "http", "h")


@pytest.mark.parametrize(
    ("proto", "host", "expected"),
    [
        (["http, https"], ["evil.example, api.example.com"], ("https", "api.example.com")),
        (["https", "http"], ["a.example", "api.example.com:8443"],
         ("http", "api.example.com:8443")),
        (["HTTPS"], ["[2001:db8::1]:443"], ("https", "[2001:db8::1]:443")),
        (["javascript"], ["evil.example/path"], ("http", "keygate.internal")),
        (["https\x00"], ["evil example"], ("http", "keygate.internal")),
        ([""], [""], ("http", "keygate.internal")),
        ([], [], ("http", "keygate.internal")),
        (["https"], ["a" * 300], ("https", "keygate.internal")),
        (["https"], ["a" * 64 + ".example"], ("https", "keygate.internal")),
    ],
)
def test_forwarded_proto_and_host_are_the_nearest_proxys_and_well_formed(proto, host, expected):
    sent = headers(*[("X-Forwarded-Proto", v) for v in proto],
                   *[("X-Forwarded-Host", v) for v in host])
    forwarding = TRUSTED.forwarding(LB, sent, "http", "keygate.internal")
    assert (forwarding.proto, forwarding.host) == expected


def test_trusts_is_whether_the_peer_is_a_trusted_proxy():
    assert TRUSTED.trusts(LB) and TRUSTED.trusts("[fd00::5]:443")
    for peer in ("203.0.113.7", "", "unknown", "10.0.0.5, 10.0.0.6", "fe80::1%eth0"):
        assert not TRUSTED.trusts(peer), peer
    assert not TrustedProxies(()).trusts(LB)


@pytest.mark.parametrize(
    ("secure", "trusted", "sent", "expected"),
    [
        # the connection itself is TLS: whatever a proxy says
        (True, False, [], True),
        (True, True, [("X-Forwarded-Proto", "http")], True),
        # a trusted proxy's X-Forwarded-Proto: the rightmost, which it wrote
        (False, True, [("X-Forwarded-Proto", "https")], True),
        (False, True, [("X-Forwarded-Proto", "HTTPS")], True),
        (False, True, [("X-Forwarded-Proto", "http, https")], True),
        (False, True, [("X-Forwarded-Proto", "https, http")], False),
        (False, True, [("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http")], False),
        (False, True, [("X-Forwarded-Proto", "http")], False),
        (False, True, [("X-Forwarded-Proto", "https\x00")], False),
        (False, True, [("X-Forwarded-Proto", "wss")], False),
        (False, True, [], False),
        # from a peer that is not a trusted proxy it is the client's word: nothing
        (False, False, [("X-Forwarded-Proto", "https")], False),
        # RFC 7239 Forwarded is not read, from anyone, well-formed or not
        (False, True, [("Forwarded", "proto=https")], False),
        (False, True, [("Forwarded", "for=192.0.2.60;proto=https;by=203.0.113.43")], False),
        (False, True, [("Forwarded", 'proto="https'), ("Forwarded", ";;=,")], False),
        (False, True, [("Forwarded", "proto=https"), ("X-Forwarded-Proto", "http")], False),
        (False, True, [("Forwarded", "proto=http"), ("X-Forwarded-Proto", "https")], True),
    ],
)
def test_over_tls_is_the_connection_or_a_trusted_proxys_x_forwarded_proto(
    secure, trusted, sent, expected
):
    """The one rule every port applies (gateway.forwarded.client_over_tls)."""
    assert client_over_tls(headers(*sent), secure=secure, trusted_peer=trusted) is expected


entries = st.one_of(
    st.sampled_from(["10.0.0.1", "10.2.3.4:80", "fd00::1", "[fd00::2]:443", "192.168.1.1",
                     "198.51.100.9", "6.6.6.6", "2001:db8::1", "unknown", "", " ", "x"]),
    st.text(max_size=20),
)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([LB, "fd00::5", "203.0.113.7", "::1", ""]),
       st.lists(st.lists(entries, max_size=6).map(", ".join), max_size=3))
def test_the_client_is_the_peer_or_an_address_a_trusted_hop_reported(peer, xff):
    client, sent = TRUSTED.client_address(peer, xff)
    chain = sent.split(", ")
    assert chain[0] == client  # the upstream's leftmost entry is the client keygate used
    if TRUSTED.hop(peer) is None or not TRUSTED.hop(peer)[1]:
        assert (client, sent) == (peer, peer)
        return
    assert chain[-1] == TRUSTED.hop(peer)[0]
    # every entry but the client is a trusted proxy; each is a plain address
    for hop in chain[1:]:
        assert TRUSTED.hop(hop) == (hop, True)
    assert TRUSTED.hop(client)[0] == client
    # the client is the peer or an address some entry holds: never other text
    reported = [parse_address(e) for e in ",".join(xff).split(",")] + [parse_address(peer)]
    assert ipaddress.ip_address(client) in reported
