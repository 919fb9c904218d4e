"""DNS: one dnspython resolver per process, with a TTL-respecting shared cache.

pyspf's own dnspython driver builds no cache and ignores TTLs, so every
transaction would pay every round trip again; here all connections share
dnspython's LRUCache, which honours TTLs (and negative answers' SOA minimum).
dnspython retries over TCP by itself when a UDP answer comes back truncated.

In front of dnspython sits a plain dict of answers already converted to
pyspf's shape, keyed by (name, type) and valid until the dnspython Answer's
own expiration (its TTL, or the SOA minimum of a negative answer): a warm
lookup costs one dict get and one clock read instead of a dnspython
resolution (name parsing, cache locking, Answer walking).
"""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any

import dns.exception
import dns.inet
import dns.nameserver
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver

CACHE_SIZE = 50_000


# Set by ``spfmilter check --trace``: a list that every lookup appends a line to.
trace: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("dns_trace", default=None)


class TempFailure(Exception):
    """A lookup that did not get a definitive answer (timeout, SERVFAIL, REFUSED)."""


class Resolver:
    """The lookups pyspf needs, answered through one cached dnspython resolver."""

    def __init__(self, nameservers: tuple[tuple[str, int], ...] = (),
                 timeout: float = 20.0, cache_size: int = CACHE_SIZE) -> None:
        if nameservers:
            res = dns.resolver.Resolver(configure=False)
            res.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                               for host, port in nameservers]
        else:
            res = dns.resolver.Resolver()
        # Each attempt may use the whole budget; the budget itself is enforced by
        # the caller through ``lifetime`` so a check never outlives Lookup_Time.
        res.timeout = timeout
        res.lifetime = timeout
        res.cache = dns.resolver.LRUCache(cache_size)
        self._resolver = res
        self._lock = threading.Lock()
        self.queries = 0
        self.timeouts = 0
        # (name, qtype) -> (object with .expiration, answer in pyspf's shape)
        self._converted: dict[tuple[str, str], tuple[Any, list]] = {}
        self._converted_max = cache_size
        self._converted_hits = 0

    @property
    def cache(self) -> dns.resolver.LRUCache:
        return self._resolver.cache

    def stats(self) -> dict[str, float]:
        """Lookups asked, answered from the cache, from the network, and timed out."""
        cache = self._resolver.cache
        return {"lookups": self.queries, "hits": cache.hits() + self._converted_hits,
                "misses": cache.misses(), "timeouts": self.timeouts}

    def resolve(self, name: str, qtype: str, lifetime: float) -> dns.resolver.Answer | None:
        """One lookup; None means 'no such data' (NXDOMAIN or no records of that type)."""
        with self._lock:
            self.queries += 1
        try:
            return self._resolver.resolve(name, qtype, lifetime=max(lifetime, 0.001),
                                          search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return None
        except dns.exception.Timeout as exc:
            with self._lock:
                self.timeouts += 1
            raise TempFailure(f"DNS timeout looking up {name}/{qtype}") from exc
        except dns.resolver.NoNameservers as exc:
            raise TempFailure(f"DNS server failure looking up {name}/{qtype}") from exc
        except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel):
            return None
        except dns.exception.DNSException as exc:
            raise TempFailure(f"DNS error looking up {name}/{qtype}: {exc}") from exc

    def spf_lookup(self, name: str, qtype: str, lifetime: float) -> list[tuple[tuple[str, str], Any]]:
        """Answer in the shape pyspf's DNSLookup hook returns: [((name, type), data)]."""
        key = (name, qtype)
        hit = self._converted.get(key)
        if hit is not None and hit[0].expiration > time.time() and trace.get() is None:
            with self._lock:
                self.queries += 1
                self._converted_hits += 1
            return list(hit[1])
        lines = trace.get()
        if lines is not None:
            return self._traced(lines, name, qtype, lifetime)
        answer = self.resolve(name, qtype, lifetime)
        if answer is None or answer.rrset is None:
            if answer is None:
                answer = self._negative_answer(name)
            if answer is not None:
                self._remember(key, answer, [])
            return []
        out: list[tuple[tuple[str, str], Any]] = []
        for rdata in answer.rrset:
            if qtype in ("A", "AAAA"):
                out.append((key, rdata.address))
            elif qtype == "MX":
                out.append((key, (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))))
            elif qtype == "PTR":
                out.append((key, rdata.target.to_text(omit_final_dot=True)))
            elif qtype in ("TXT", "SPF"):
                out.append((key, list(rdata.strings)))
        self._remember(key, answer, out)
        return list(out)

    def _negative_answer(self, name: str) -> Any:
        """dnspython's cached NXDOMAIN Answer for ``name`` (it carries the negative TTL)."""
        try:
            key = (dns.name.from_text(name), dns.rdatatype.ANY, dns.rdataclass.IN)
        except dns.exception.DNSException:
            return None
        node = self._resolver.cache.data.get(key)
        return node.value if node is not None else None

    def _remember(self, key: tuple[str, str], answer: Any, out: list) -> None:
        converted = self._converted
        if len(converted) >= self._converted_max:
            # drop the oldest tenth (dicts keep insertion order); expired entries go with them
            for old in list(converted)[: max(1, self._converted_max // 10)]:
                converted.pop(old, None)
        converted[key] = (answer, out)

    def _traced(self, lines: list[str], name: str, qtype: str,
                lifetime: float) -> list[tuple[tuple[str, str], Any]]:
        try:
            key = (dns.name.from_text(name), dns.rdatatype.from_text(qtype), dns.rdataclass.IN)
            cached = self._resolver.cache.get(key) is not None
        except dns.exception.DNSException:
            cached = False
        token = trace.set(None)
        try:
            out = self.spf_lookup(name, qtype, lifetime)
        except TempFailure as exc:
            lines.append(f"DNS {name} {qtype}: {exc}")
            raise
        finally:
            trace.reset(token)
        shown = ", ".join(
            b"".join(v).decode("utf-8", "replace") if isinstance(v, list) else str(v)
            for _, v in out) or "no data"
        lines.append(f"DNS {name} {qtype}{' (cached)' if cached else ''}: {shown}")
        return out
