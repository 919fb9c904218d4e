"""What a set of decisions amounts to: the summary ``spfmilter report`` prints for its logs
(and ``spfmilter replay`` for a mail store), as text and as JSON.

(One module although long: most of its length is the JSON keys' documentation,
the one place they are written down; the counting and the two renderings read
the same tables and change together.)

One model for both commands, so that an administrator compares a replay of the
mail store with weeks of ``TestOnly = 0`` in the same words and the same JSON.
It takes plain records (:class:`Record`), never log lines or milter objects:
each command turns its own input into records.

Memory stays bounded whatever the input: every table keeps at most
``limit`` keys (default :data:`TABLE_LIMIT`).  When a table is full, its
least-counted half is folded into the table's ``other`` count, so totals stay
exact and the counts shown are exact unless the table says ``folded``, in
which case a key's count is a lower bound (what it gathered since it was last
kept).  A table's busiest keys survive folding: it is the one-off senders of
a long log that are folded.

JSON (``to_json()``; ``replay --json`` and ``report --json`` print it as
``{"summary": ...}``).  A *table* is ``{"top": {key: count, ...}, "other": n,
"folded": bool}``: at most ``show`` keys, busiest first, the rest counted in
``other``.  Keys of the summary:

``period``
    ``{"first": ISO time or null, "last": ...}``: the earliest and latest
    time of the records that had one.
``decisions``
    Records counted (final decisions; a refusal held for DKIM_Rescue or a
    message waiting for its trusted relay's Received header counts once, at
    end of message).
``provisional``
    Decisions not counted because a later one for the same message replaces
    them (held for DKIM_Rescue, trusted relay before end of headers).
``actions``
    ``{action: count}``: accept, reject, defer, tempfail (an internal error),
    not-replayable (replay only).
``results``
    ``{"helo": {result: count}, "mailfrom": {result: count}}`` (RFC 7208
    results; an identity not evaluated is not counted).
``not_checked``
    Table of why nothing was checked (``skipped (whitelist)``,
    ``skipped (authenticated)``, ...).
``refused``
    ``{"count": n, "by_sender_domain": table, "by_client": table}``: rejects.
``deferred``
    The same for defers (DNS errors under TempError_Defer, a DKIM key lookup
    that failed, ...).
``would_refuse``
    The same for what ``TestOnly = 0`` accepted but would have rejected or
    deferred, plus ``"by_action": {"reject": n, "defer": n}``.
``forwarders``
    List of probable forwarders: clients for which MAIL FROM failed
    (fail/softfail) for at least ``limits.forwarder_domains`` unrelated sender
    domains (organizational domains: replay's by the public suffix list,
    report's by a rule of thumb; report asks for 3, replay for 2): ``{"client_ip", "failures", "domains" (at most
    ``FORWARDER_KEEP``, sorted), "more_domains" (bool), "helo" (a HELO name
    that passed SPF for it, or null), "exempt" (the configuration lines that
    would exempt it)}``.
``dkim``
    ``{"rescued": n, "not_rescued": n, "by_domain": table}``: refusals held
    for DKIM_Rescue, and the sender domains rescued.
``relay_hops``
    ``{"count": n, "by_relay": table}``: decisions for the host behind a
    Trusted_Relays relay.
``temperror``
    ``{"count": n, "by_name": table}``: decisions with an SPF temperror, by
    the name whose lookup failed (sender domain or HELO name).
``dns_failures``
    ``{"count": n, "by_name": table}``: the resolver's ``action=dns-failure``
    lines (report only).
``internal_errors``
    ``{"count": n, "by_error": table}``: tempfails for a fault in spfmilter,
    by callback and exception type.
``not_replayable``
    ``{"count": n, "by_reason": table}`` (replay only).
``limits``
    ``{"table_keys": limit, "forwarder_clients": n, "forwarder_domains": n}``:
    the bounds above.
``note``
    A caveat to read the summary with, or null (replay: results reflect
    today's DNS, not the DNS when the mail arrived).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

TABLE_LIMIT = 5000          # keys a table keeps before folding its least-counted half
FORWARDER_DOMAINS = 3       # unrelated sender domains failing from one client: a forwarder
FORWARDER_KEEP = 10         # sender domains remembered per client
SHOW_TEXT = 10              # keys shown per table in the text
SHOW_JSON = 100             # keys given per table in JSON

_FAILS = frozenset({"fail", "softfail"})
# a HELO that can go in Domain_Whitelist (not an address literal, nor a sender's junk)
_NAME = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+[A-Za-z]{2,63}\.?")


@dataclass(slots=True)
class Record:
    """One decision, as plain values.

    ``helo_result``/``mailfrom_result``: RFC 7208 result, or None when that identity
    was not evaluated.  ``rescued``: None when no refusal was held for DKIM_Rescue,
    else whether a signature rescued it.  ``would``: the action ``TestOnly = 0``
    kept from happening (reject, defer), else None.  ``relay``: the trusted relay
    the client was found behind.  ``skipped``: why nothing was checked.  ``error``:
    the fault behind a tempfail.  ``reason``: why a message is not-replayable."""

    action: str
    helo_result: str | None = None
    mailfrom_result: str | None = None
    sender_domain: str = ""          # "" for the null sender
    client_ip: str = ""
    helo: str = ""
    rescued: bool | None = None
    would: str | None = None
    relay: str | None = None
    skipped: str | None = None
    error: str | None = None
    reason: str | None = None
    time: dt.datetime | None = None


class Table:
    """Counts per key, at most ``limit`` keys (see the module's docstring)."""

    __slots__ = ("counts", "other", "limit", "folded")

    def __init__(self, limit: int = TABLE_LIMIT) -> None:
        self.counts: dict[str, int] = {}
        self.other = 0
        self.limit = max(2, limit)
        self.folded = False

    def add(self, key: str, n: int = 1) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += n
            return
        if len(counts) >= self.limit:
            self._fold()
        self.counts[key] = n

    def _fold(self) -> None:
        ranked = sorted(self.counts.items(), key=lambda kv: kv[1], reverse=True)
        keep = ranked[:self.limit // 2]
        self.other += sum(n for _, n in ranked[self.limit // 2:])
        self.counts = dict(keep)
        self.folded = True

    def total(self) -> int:
        return sum(self.counts.values()) + self.other

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def to_json(self, show: int = SHOW_JSON) -> dict[str, object]:
        top = self.top(show)
        return {"top": dict(top), "other": self.total() - sum(n for _, n in top),
                "folded": self.folded}


class _Client:
    __slots__ = ("failures", "domains", "more", "helo")

    def __init__(self) -> None:
        self.failures = 0
        self.domains: set[str] = set()
        self.more = False
        self.helo: str | None = None


def org_domain(name: str) -> str:
    """The registrable part of ``name``, by a rule of thumb (no public suffix list:
    the summary needs only the standard library): the last two labels, three when
    the second-level label looks like a public one (``co.uk``, ``com.au``)."""
    labels = name.rstrip(".").lower().split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and \
            (len(labels[-2]) <= 3 or labels[-2] in ("gouv", "govt")):
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


class Summary:
    """Counts over records; ``add`` each, then ``to_json()`` or ``render()``."""

    def __init__(self, limit: int = TABLE_LIMIT, org: Callable[[str], str] | None = None,
                 forwarder_domains: int = FORWARDER_DOMAINS, note: str | None = None) -> None:
        """``org``: the organizational domain of a sender domain, for forwarder
        detection (replay passes the public suffix list's; the default is
        :func:`org_domain`).  ``note``: a caveat the reader must see (replay's)."""
        self.limit = limit
        self._org = org or org_domain
        self.forwarder_domains = max(2, forwarder_domains)
        self.note = note
        self.first: dt.datetime | None = None
        self.last: dt.datetime | None = None
        self.decisions = 0
        self.provisional = 0
        self.actions: dict[str, int] = {}
        self.results: dict[str, dict[str, int]] = {"helo": {}, "mailfrom": {}}
        self.not_checked = Table(limit)
        self.refused = (Table(limit), Table(limit))           # by sender domain, by client
        self.deferred = (Table(limit), Table(limit))
        self.would = (Table(limit), Table(limit))
        self.would_actions: dict[str, int] = {}
        self.rescued = 0
        self.not_rescued = 0
        self.rescued_by_domain = Table(limit)
        self.relay_hops = Table(limit)
        self.temperror = Table(limit)
        self.dns_failures = Table(limit)
        self.internal_errors = Table(limit)
        self.not_replayable = Table(limit)
        self._clients: dict[str, _Client] = {}

    # --- counting -----------------------------------------------------------------

    def saw_time(self, when: dt.datetime) -> None:
        if self.first is None or when < self.first:
            self.first = when
        if self.last is None or when > self.last:
            self.last = when

    def add(self, r: Record) -> None:
        if r.time is not None:
            self.saw_time(r.time)
        self.decisions += 1
        self.actions[r.action] = self.actions.get(r.action, 0) + 1
        if r.action == "tempfail":
            self.internal_errors.add(r.error or "unknown")
            return
        if r.action == "not-replayable":
            self.not_replayable.add(r.reason or "unknown")
            return
        for identity, result in (("helo", r.helo_result), ("mailfrom", r.mailfrom_result)):
            if result is not None:
                counts = self.results[identity]
                counts[result] = counts.get(result, 0) + 1
        if r.skipped is not None:
            self.not_checked.add(r.skipped)
        domain = r.sender_domain or "<>"
        client = r.client_ip or "unknown"
        if r.action == "reject":
            self._both(self.refused, domain, client)
        elif r.action == "defer":
            self._both(self.deferred, domain, client)
        if r.would is not None:
            self._both(self.would, domain, client)
            self.would_actions[r.would] = self.would_actions.get(r.would, 0) + 1
        if r.rescued is True:
            self.rescued += 1
            self.rescued_by_domain.add(domain)
        elif r.rescued is False:
            self.not_rescued += 1
        if r.relay:
            self.relay_hops.add(r.relay)
        if r.mailfrom_result == "temperror":
            self.temperror.add(r.sender_domain or r.helo or "<>")
        if r.helo_result == "temperror" and r.helo:
            self.temperror.add(r.helo.lower())
        if r.mailfrom_result in _FAILS and r.client_ip:
            self._forwarder(r)

    @staticmethod
    def _both(tables: tuple[Table, Table], domain: str, client: str) -> None:
        tables[0].add(domain)
        tables[1].add(client)

    def _forwarder(self, r: Record) -> None:
        clients = self._clients
        c = clients.get(r.client_ip)
        if c is None:
            if len(clients) >= self.limit:
                ranked = sorted(clients.items(), key=lambda kv: kv[1].failures, reverse=True)
                self._clients = clients = dict(ranked[:self.limit // 2])
            c = clients[r.client_ip] = _Client()
        c.failures += 1
        org = self._org(r.sender_domain) if r.sender_domain else ""
        if org and org not in c.domains:
            if len(c.domains) < FORWARDER_KEEP:
                c.domains.add(org)
            else:
                c.more = True
        if r.helo_result == "pass" and _NAME.fullmatch(r.helo):
            c.helo = r.helo.rstrip(".").lower()

    def dns_failure(self, name: str, when: dt.datetime | None = None) -> None:
        """A lookup the resolver logged as failed (``action=dns-failure``)."""
        if when is not None:
            self.saw_time(when)
        self.dns_failures.add(name.rstrip(".").lower() or ".")

    # --- reading ------------------------------------------------------------------

    def forwarders(self) -> list[dict[str, object]]:
        found = sorted(((ip, c) for ip, c in self._clients.items()
                        if len(c.domains) >= self.forwarder_domains),
                       key=lambda ic: (-len(ic[1].domains), -ic[1].failures, ic[0]))
        return [{"client_ip": ip, "failures": c.failures, "domains": sorted(c.domains),
                 "more_domains": c.more, "helo": c.helo, "exempt": _exempt(ip, c.helo)}
                for ip, c in found]

    def to_json(self) -> dict[str, object]:
        def pair(tables: tuple[Table, Table]) -> dict[str, object]:
            return {"count": tables[0].total(), "by_sender_domain": tables[0].to_json(),
                    "by_client": tables[1].to_json()}

        would = pair(self.would)
        would["by_action"] = dict(sorted(self.would_actions.items()))
        return {
            "period": {"first": _iso(self.first), "last": _iso(self.last)},
            "decisions": self.decisions,
            "provisional": self.provisional,
            "actions": dict(sorted(self.actions.items())),
            "results": {k: dict(sorted(v.items())) for k, v in self.results.items()},
            "not_checked": self.not_checked.to_json(),
            "refused": pair(self.refused),
            "deferred": pair(self.deferred),
            "would_refuse": would,
            "forwarders": self.forwarders(),
            "dkim": {"rescued": self.rescued, "not_rescued": self.not_rescued,
                     "by_domain": self.rescued_by_domain.to_json()},
            "relay_hops": {"count": self.relay_hops.total(),
                           "by_relay": self.relay_hops.to_json()},
            "temperror": {"count": self.temperror.total(), "by_name": self.temperror.to_json()},
            "dns_failures": {"count": self.dns_failures.total(),
                             "by_name": self.dns_failures.to_json()},
            "internal_errors": {"count": self.internal_errors.total(),
                                "by_error": self.internal_errors.to_json()},
            "not_replayable": {"count": self.not_replayable.total(),
                               "by_reason": self.not_replayable.to_json()},
            "limits": {"table_keys": self.limit, "forwarder_clients": self.limit,
                       "forwarder_domains": self.forwarder_domains},
            "note": self.note,
        }

    def json_text(self) -> str:
        return json.dumps({"summary": self.to_json()}, indent=1)

    def render(self) -> str:
        """The summary as text, in the manner of pflogsumm: totals first, then the tables."""
        out: list[str] = []
        first, last = _iso(self.first), _iso(self.last)
        out.append(f"Period: {first} .. {last}" if first else "Period: no timestamps seen")
        out.append(f"Decisions: {self.decisions:,}" + (
            f" (and {self.provisional:,} provisional ones replaced at end of message)"
            if self.provisional else ""))
        out += ["", "Actions"]
        out += [f"  {n:>10,}  {a}" for a, n in sorted(self.actions.items(), key=lambda kv: -kv[1])]
        out += ["", "SPF results          HELO   MAIL FROM"]
        results = sorted(set(self.results["helo"]) | set(self.results["mailfrom"]))
        out += [f"  {res:<12} {self.results['helo'].get(res, 0):>10,} "
                f"{self.results['mailfrom'].get(res, 0):>10,}" for res in results]
        _table(out, "Not checked", self.not_checked)
        for title, tables in (("Refused (reject)", self.refused), ("Deferred", self.deferred)):
            _pair(out, title, tables)
        would = ", ".join(f"{n:,} {a}" for a, n in sorted(self.would_actions.items()))
        _pair(out, "What TestOnly = 0 kept from refusing" + (f" ({would})" if would else ""),
              self.would)
        out += ["", f"Probable forwarders (MAIL FROM fail/softfail for at least "
                    f"{self.forwarder_domains} unrelated sender domains)"]
        forwarders = self.forwarders()
        if not forwarders:
            out.append("  none")
        for f in forwarders[:SHOW_TEXT * 2]:
            domains = ", ".join(f["domains"])  # type: ignore[arg-type]
            more = ", ..." if f["more_domains"] else ""
            out.append(f"  {f['client_ip']}: {f['failures']:,} failures, {domains}{more}")
            out += [f"      exempt with: {line}" for line in f["exempt"]]  # type: ignore[attr-defined]
        out += ["", f"DKIM_Rescue: {self.rescued:,} rescued, {self.not_rescued:,} not rescued"]
        _rows(out, self.rescued_by_domain)
        out += ["", f"Trusted relay hops: {self.relay_hops.total():,}"]
        _rows(out, self.relay_hops)
        out += ["", f"SPF temperrors: {self.temperror.total():,}"]
        _rows(out, self.temperror)
        if self.dns_failures.total():
            out += ["", f"DNS failures logged by the resolver: {self.dns_failures.total():,}"]
            _rows(out, self.dns_failures)
        out += ["", f"Internal errors (tempfail): {self.internal_errors.total():,}"]
        _rows(out, self.internal_errors)
        if self.not_replayable.total():
            out += ["", f"Not replayable: {self.not_replayable.total():,}"]
            _rows(out, self.not_replayable)
        if any(t.folded for t in self._tables()):
            out += ["", f"Some tables held more than {self.limit:,} keys: their least counted "
                        "keys were folded into 'other', and the counts shown are lower bounds."]
        if self.note:
            out += ["", f"Note: {self.note}."]
        return "\n".join(out) + "\n"

    def _tables(self) -> Iterable[Table]:
        return (self.not_checked, *self.refused, *self.deferred, *self.would,
                self.rescued_by_domain, self.relay_hops, self.temperror, self.dns_failures,
                self.internal_errors, self.not_replayable)


def _exempt(ip: str, helo: str | None) -> list[str]:
    """The configuration lines that exempt a forwarder: its address; or, since its
    HELO name passed SPF for it, that name's domain (all its servers)."""
    return [f"Whitelist = {ip}"] + ([f"Domain_Whitelist = {helo}"] if helo else [])


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat(sep=" ", timespec="seconds") if when is not None else None


def _rows(out: list[str], table: Table) -> None:
    top = table.top(SHOW_TEXT)
    out += [f"  {n:>10,}  {key}" for key, n in top]
    rest = table.total() - sum(n for _, n in top)
    if rest:
        out.append(f"  {rest:>10,}  (other)")


def _table(out: list[str], title: str, table: Table) -> None:
    out += ["", f"{title}: {table.total():,}"]
    _rows(out, table)


def _pair(out: list[str], title: str, tables: tuple[Table, Table]) -> None:
    out += ["", f"{title}: {tables[0].total():,}"]
    if tables[0].total():
        out.append("  by sender domain")
        _rows(out, tables[0])
        out.append("  by client")
        _rows(out, tables[1])
