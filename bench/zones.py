"""Zone data for the benchmark: realistic SPF records, and the transactions that use them.

One zone, ``bench.test.``, served by NSD on 127.0.0.1:53 inside the benchmark's
own network namespace.  Every record has TTL 3600 and the SOA minimum is 3600,
so a caching resolver keeps positive and negative answers for the whole run.

Warm set: ``WARM_DOMAINS`` sender domains ``d<i>.warm.bench.test`` spread over
``PROVIDERS`` hosting providers ``mh<k>.bench.test``.  A sender domain's record::

    v=spf1 mx a:out.d<i>.warm.bench.test include:_spf.mh<k>.bench.test ~all

``mx`` costs an MX lookup plus one A (or AAAA) lookup per MX host (two hosts);
``_spf.mh<k>`` includes ``_nb1.mh<k>`` and ``_nb2.mh<k>`` (include chain three
deep: domain -> _spf -> _nb1/_nb2), which list IPv4 and IPv6 ranges.  The HELO
name ``o<j>.mh<k>.bench.test`` has ``v=spf1 a include:_nb2.mh<k>.bench.test ~all``.
A passing client address sits in ``_nb2`` (the last range list looked at), so a
pass walks every mechanism; one transaction in ten comes from an address listed
nowhere (softfail: the whole tree, then ``~all``), one in ten from IPv6.
Uncached, a warm-set transaction costs 10 queries (HELO: TXT, A, TXT _nb2;
MAIL FROM: TXT, MX, A/AAAA of both MX hosts, A of out, TXT _spf, TXT _nb1 --
_nb2 is already known from the HELO check).

Cold set: ``c<i>.cold.bench.test`` with the same shape but every name of the
tree private to that domain (its own _spf, _nb, MX hosts, HELO name), so a
transaction on a new cold domain can be answered from no cache at all: 9
queries (HELO: TXT, A, TXT _nb; MAIL FROM: TXT, MX, 2 A/AAAA, A, TXT _spf).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

ZONE = "bench.test"
TTL = 3600
PROVIDERS = 10
WARM_DOMAINS = 300
HELOS_PER_PROVIDER = 10


@dataclass(frozen=True)
class Tx:
    """One transaction's envelope: what the MTA tells the milter."""

    client_ip: str
    helo: str
    sender: str


def _v4(a: int, b: int, c: int) -> str:
    return f"198.{a}.{b}.{c}"


def _nb2_v4(k: int, r: int) -> str:
    """Provider k's r-th /24 in _nb2 (the ranges passing clients come from)."""
    return f"198.19.{k * 20 + r}.0/24"


def _nb2_v6(k: int, r: int) -> str:
    return f"2001:db8:{k:x}:{r:x}::/64"


def _txt(value: str) -> str:
    """Zone-file form of a TXT value: character-strings of at most 250 bytes."""
    parts = [value[i:i + 250] for i in range(0, len(value), 250)]
    return " ".join(f'"{p}"' for p in parts)


Record = tuple  # (owner name with final dot, type, value): TXT text, A/AAAA address, MX (pref, host.)


def zone_line(rec: Record) -> str:
    name, rtype, value = rec
    if rtype == "TXT":
        return f"{name} TXT {_txt(value)}"
    if rtype == "MX":
        return f"{name} MX {value[0]} {value[1]}"
    return f"{name} {rtype} {value}"


def _warm_records() -> list[Record]:
    out: list[Record] = []
    for k in range(PROVIDERS):
        mh = f"mh{k}.{ZONE}."
        out.append((f"_spf.{mh}", "TXT", f"v=spf1 include:_nb1.mh{k}.{ZONE} "
                                         f"include:_nb2.mh{k}.{ZONE} ~all"))
        nb1 = " ".join(f"ip4:198.18.{k * 20 + r}.0/24" for r in range(10))
        nb1 += " " + " ".join(f"ip6:2001:db8:ff{k:x}:{r:x}::/64" for r in range(4))
        out.append((f"_nb1.{mh}", "TXT", f"v=spf1 {nb1} ~all"))
        nb2 = " ".join(f"ip4:{_nb2_v4(k, r)}" for r in range(10))
        nb2 += " " + " ".join(f"ip6:{_nb2_v6(k, r)}" for r in range(10))
        out.append((f"_nb2.{mh}", "TXT", f"v=spf1 {nb2} ~all"))
        for j in range(HELOS_PER_PROVIDER):
            helo = f"o{j}.{mh}"
            out.append((helo, "TXT", f"v=spf1 a include:_nb2.mh{k}.{ZONE} ~all"))
            out.append((helo, "A", f"198.18.{200 + k}.{j + 1}"))
            out.append((helo, "AAAA", f"2001:db8:ee{k:x}::{j + 1:x}"))
    for i in range(WARM_DOMAINS):
        k = i % PROVIDERS
        d = f"d{i}.warm.{ZONE}."
        out.append((d, "TXT", f"v=spf1 mx a:out.d{i}.warm.{ZONE} include:_spf.mh{k}.{ZONE} ~all"))
        out.append((d, "MX", (10, f"mx1.{d}")))
        out.append((d, "MX", (20, f"mx2.{d}")))
        a, b = divmod(i, 250)
        for n, host in enumerate(("mx1", "mx2", "out")):
            out.append((f"{host}.{d}", "A", f"198.18.{220 + a * 3 + n}.{b + 1}"))
            out.append((f"{host}.{d}", "AAAA", f"2001:db8:dd{n:x}:{i:x}::1"))
    return out


def _cold_records(i: int) -> list[Record]:
    d = f"c{i}.cold.{ZONE}."
    hi, lo = divmod(i, 250)
    hi %= 250
    r = [(d, "TXT", f"v=spf1 mx a:out.c{i}.cold.{ZONE} include:_spf.c{i}.cold.{ZONE} ~all"),
         (d, "MX", (10, f"mx1.{d}")), (d, "MX", (20, f"mx2.{d}"))]
    for n, host in enumerate(("mx1", "mx2", "out")):
        r.append((f"{host}.{d}", "A", f"198.18.{n}.{lo + 1}"))
        r.append((f"{host}.{d}", "AAAA", f"2001:db8:cc{n:x}:{i:x}::1"))
    r.append((f"_spf.{d}", "TXT", f"v=spf1 ip4:198.18.{3 + i % 10}.0/24 include:_nb.c{i}.cold.{ZONE} ~all"))
    k = i % PROVIDERS
    nb = " ".join(f"ip4:{_nb2_v4(k, x)}" for x in range(10))
    nb += " " + " ".join(f"ip6:{_nb2_v6(k, x)}" for x in range(10))
    r.append((f"_nb.{d}", "TXT", f"v=spf1 {nb} ~all"))
    r.append((f"h.{d}", "TXT", f"v=spf1 a include:_nb.c{i}.cold.{ZONE} ~all"))
    r.append((f"h.{d}", "A", f"198.18.{100 + hi % 100}.{lo + 1}"))
    return r


def write_zone(path: Path, cold_domains: int) -> int:
    """Write the zone file; returns the number of records."""
    count = 0
    with open(path, "w") as f:
        f.write(f"$ORIGIN {ZONE}.\n$TTL {TTL}\n")
        f.write(f"@ SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 {TTL}\n")
        f.write(f"@ NS ns.{ZONE}.\nns A 127.0.0.1\n")
        for rec in _warm_records():
            f.write(zone_line(rec) + "\n")
            count += 1
        for i in range(cold_domains):
            recs = _cold_records(i)
            f.write("\n".join(map(zone_line, recs)) + "\n")
            count += len(recs)
    return count + 3


def _client_ip(rng: random.Random, k: int) -> str:
    roll = rng.random()
    if roll < 0.1:  # listed nowhere: softfail after walking everything
        return f"198.19.250.{rng.randrange(1, 255)}"
    if roll < 0.2:  # IPv6 client
        return f"2001:db8:{k:x}:{rng.randrange(10):x}::{rng.randrange(1, 0xffff):x}"
    return f"198.19.{k * 20 + rng.randrange(10)}.{rng.randrange(1, 255)}"


def warm_tx(rng: random.Random) -> Tx:
    i = rng.randrange(WARM_DOMAINS)
    k = i % PROVIDERS
    return Tx(_client_ip(rng, k), f"o{rng.randrange(HELOS_PER_PROVIDER)}.mh{k}.{ZONE}",
              f"user{rng.randrange(1000)}@d{i}.warm.{ZONE}")


def cold_tx(rng: random.Random, i: int) -> Tx:
    k = i % PROVIDERS
    return Tx(_client_ip(rng, k), f"h.c{i}.cold.{ZONE}", f"user{rng.randrange(1000)}@c{i}.cold.{ZONE}")


def all_warm() -> list[Tx]:
    """Every warm sender domain and HELO name once (to fill a cache)."""
    rng = random.Random(7)
    txs = []
    for i in range(WARM_DOMAINS):
        k = i % PROVIDERS
        for ip in (f"198.19.{k * 20}.9", f"2001:db8:{k:x}:0::9", "198.19.250.9"):
            txs.append(Tx(ip, f"o{(i // PROVIDERS) % HELOS_PER_PROVIDER}.mh{k}.{ZONE}",
                           f"u@d{i}.warm.{ZONE}"))
    rng.shuffle(txs)
    return txs


def warm_zonedata() -> dict:
    """The warm records in tests/dnsserver.py's zone-data format (for its capacity check)."""
    data: dict[str, list] = {}
    for name, rtype, value in _warm_records():
        if rtype == "MX":
            value = [value[0], value[1].rstrip(".")]
        data.setdefault(name.rstrip("."), []).append({rtype: value})
    return data
