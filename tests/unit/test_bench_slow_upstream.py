"""bench/slow_upstream.py: every query waits the delay, and each answer reaches the client that asked.

The forwarder runs as the benchmark runs it (its own process) in front of the
tests' DNS server on loopback.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.kit import ROOT
from tests.kit.dnsserver import TestDNSServer

DELAY = 0.2
ZONE = {"a.example": [{"TXT": "v=spf1 -all"}], "b.example": [{"TXT": "v=spf1 ~all"}],
        "long.example": [{"TXT": "v=spf1 " + " ".join(f"ip4:192.0.2.{i}" for i in range(40)) + " -all"}]}


@pytest.fixture
def forwarder() -> Iterator[int]:
    with TestDNSServer(ZONE) as server:
        proc = subprocess.Popen([sys.executable, "-m", "bench.slow_upstream", "127.0.0.1", "0", "127.0.0.1",
                                 str(server.port), str(DELAY)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            assert ready, "the forwarder did not say it was ready within 20 s"
            line = proc.stdout.readline()
            assert line.startswith("ready "), line
            yield int(line.split()[1])
        finally:
            proc.terminate()
            proc.wait(10)


def _txt(response: dns.message.Message) -> list[str]:
    return [b"".join(r.strings).decode() for rrset in response.answer for r in rrset]


def test_a_udp_query_is_answered_after_the_delay_with_the_clients_id(forwarder: int) -> None:
    query = dns.message.make_query("a.example", "TXT")
    t0 = time.monotonic()
    response = dns.query.udp(query, "127.0.0.1", port=forwarder, timeout=5)
    assert time.monotonic() - t0 >= DELAY
    assert response.id == query.id and _txt(response) == ["v=spf1 -all"]


def test_a_tcp_query_is_answered_after_the_delay(forwarder: int) -> None:
    query = dns.message.make_query("long.example", "TXT")
    t0 = time.monotonic()
    response = dns.query.tcp(query, "127.0.0.1", port=forwarder, timeout=5)
    assert time.monotonic() - t0 >= DELAY
    assert _txt(response) == [ZONE["long.example"][0]["TXT"]]


def test_queries_with_the_same_id_wait_together_and_each_gets_its_own_answer(forwarder: int) -> None:
    # two clients that chose the same ID: the forwarder's own IDs keep the answers apart,
    # and the delays run side by side (a timer each), not one after the other
    answers: dict[str, list[str]] = {}

    def ask(name: str) -> None:
        query = dns.message.make_query(name, "TXT")
        query.id = 4242
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            answers[name] = _txt(dns.query.udp(query, "127.0.0.1", port=forwarder, timeout=5, sock=sock))

    t0 = time.monotonic()
    threads = [threading.Thread(target=ask, args=(name,)) for name in ("a.example", "b.example")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == {"a.example": ["v=spf1 -all"], "b.example": ["v=spf1 ~all"]}
    assert time.monotonic() - t0 < 2 * DELAY
