"""The decision API remembers the client found by each ``X-Forwarded-For`` walk (a front
proxy sends the same few values): what it remembers must be exactly what the walk
gives, for that peer only, and its memory bounded whatever clients send."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import build_gateway
from gateway.decision import CLIENT_MEMORY, CLIENT_MEMORY_ENTRY, DecisionPort
from gateway.forwarded import TrustedProxies


def forwarded(*values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict([("X-Forwarded-For", v) for v in values]))


@pytest.fixture
async def port_and_walk(
    make_settings: Callable[..., Any],
) -> AsyncIterator[tuple[DecisionPort, TrustedProxies]]:
    gateway = build_gateway(make_settings(trusted_proxies=["10.0.0.0/8"]))
    assert gateway.trusted_proxies is not None
    yield DecisionPort(gateway), gateway.trusted_proxies
    await gateway.store.close()


CASES = [
    ("10.0.0.1", ("203.0.113.7",)),
    ("10.0.0.1", ("198.51.100.1, 10.0.0.2",)),  # a trusted hop, then the client
    ("10.0.0.1", ("203.0.113.7, 10.0.0.2, 10.0.0.3",)),
    ("10.0.0.1", ("unknown, 10.0.0.2",)),  # not an address: the last trusted hop
    ("10.0.0.1", ("",)),
    ("10.0.0.1", ("198.51.100.1", "203.0.113.7")),  # two header lines
    ("10.0.0.9", ("203.0.113.7",)),  # another trusted peer, the same value
    ("192.0.2.1", ("203.0.113.7",)),  # an untrusted peer: the client is the peer
    ("::1", ("203.0.113.7",)),
]


async def test_the_remembered_client_is_the_walks_answer_for_that_peer(port_and_walk):
    port, walk = port_and_walk
    for _ in range(3):  # first walked, then remembered
        for peer, values in CASES:
            assert port.client(peer, forwarded(*values)) == \
                walk.client_address(peer, list(values))[0], (peer, values)
    # the same value never answers for another peer
    assert port.client("10.0.0.1", forwarded("203.0.113.7")) == "203.0.113.7"
    assert port.client("192.0.2.1", forwarded("203.0.113.7")) == "192.0.2.1"


async def test_the_memory_is_bounded_whatever_clients_send(port_and_walk):
    port, walk = port_and_walk
    for i in range(CLIENT_MEMORY + 100):
        value = f"198.51.{i // 256 % 256}.{i % 256}"
        assert port.client("10.0.0.1", forwarded(value)) == value
        assert len(port.clients) <= CLIENT_MEMORY
    port.clients.clear()
    long_value = ", ".join(["10.0.0.2"] * 40)
    assert len(long_value) > CLIENT_MEMORY_ENTRY
    lines = ("198.51.100.1", "203.0.113.7")
    for _ in range(2):
        assert port.client("10.0.0.1", forwarded(long_value)) == \
            walk.client_address("10.0.0.1", [long_value])[0]
        assert port.client("10.0.0.1", forwarded(*lines)) == "203.0.113.7"
    assert port.clients == {}  # walked every time, never kept
