"""What a set of decisions adds up to: the summary of ``spfmilter replay`` (and of any
command that has decision records, such as a summary of the logs).

Why one model: an administrator compares what replay predicts with what the
logs later show, so both print the same counts under the same keys.

``Summary.add(record)`` reads these keys of a record (a mapping; missing
keys count as None): ``action`` (accept, reject, defer, tempfail,
not-replayable), ``client_ip``, ``helo``, ``envelope_from``, ``helo_result``,
``mailfrom_result`` (RFC 7208 results or None when not checked),
``rescued`` (bool) and ``reason``.

``to_json()`` gives::

    {"messages": 12,                       # records added
     "actions": {"accept": 9, ...},        # per action, every action listed
     "helo_results": {"pass": 7, ...},     # per HELO result ("not-checked" for None)
     "mailfrom_results": {"fail": 2, ...}, # per MAIL FROM result
     "refused": {"messages": 2,            # action reject or defer
                 "by_sender_domain": {"bank.example": 2},   # MAIL FROM domain, else HELO
                 "by_client": {"198.51.100.7": 2}},
     "probable_forwarders": [              # clients failing SPF for several unrelated
         {"client_ip": "198.51.100.7",     # sender domains (organizational domains)
          "helo": "fwd.example", "sender_domains": ["a.example", "b.example"],
          "messages": 3,
          "whitelist_line": "Whitelist = 198.51.100.7",
          "domain_whitelist_line": "Domain_Whitelist = fwd.example"}],   # or null
     "rescued": {"messages": 1, "by_sender_domain": {"bank.example": 1}},
     "temperrors": {"messages": 1, "by_domain": {"slow.example": 1}},
     "not_replayable": {"messages": 1, "by_reason": {"no Received header": 1}},
     "note": "results reflect today's DNS, not the DNS when the mail arrived"}

Each ``by_*`` mapping is ordered by count, largest first.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from spfmilter.checks import psl

ACTIONS = ("accept", "reject", "defer", "tempfail", "not-replayable")
REFUSED = ("reject", "defer")
#: MAIL FROM results that a forwarder's mail gets when the envelope is not rewritten.
FORWARD_FAILURES = ("fail", "softfail")
#: Unrelated sender domains a client must fail for to count as a probable forwarder.
FORWARDER_DOMAINS = 2
NOTE = "results reflect today's DNS, not the DNS when the mail arrived"
#: Entries listed per mapping in the text rendering (the JSON has them all).
SHOWN = 10


def _domain(address: str | None) -> str:
    return (address or "").rpartition("@")[2].lower()


def _top(counter: Counter[str]) -> dict[str, int]:
    return dict(counter.most_common())


class Summary:
    """Counts over decision records; bounded by the number of distinct domains and clients."""

    def __init__(self, org_domain: Callable[[str], str] = psl.organizational_domain) -> None:
        self._org = org_domain
        self.messages = 0
        self.actions: Counter[str] = Counter({a: 0 for a in ACTIONS})
        self.helo_results: Counter[str] = Counter()
        self.mailfrom_results: Counter[str] = Counter()
        self.refused_domains: Counter[str] = Counter()
        self.refused_clients: Counter[str] = Counter()
        self.rescued: Counter[str] = Counter()
        self.temperrors: Counter[str] = Counter()
        self.not_replayable: Counter[str] = Counter()
        # client -> organizational domain of a failing sender -> messages; and its HELO
        self._failing: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._helo: dict[str, tuple[str, bool]] = {}

    def add(self, record: Mapping[str, Any]) -> None:
        self.messages += 1
        action = str(record.get("action") or "tempfail")
        self.actions[action] += 1
        if action == "not-replayable":
            self.not_replayable[str(record.get("reason") or "unknown")] += 1
            return
        helo_result, mailfrom_result = record.get("helo_result"), record.get("mailfrom_result")
        self.helo_results[helo_result or "not-checked"] += 1
        self.mailfrom_results[mailfrom_result or "not-checked"] += 1
        helo = str(record.get("helo") or "")
        sender_domain = _domain(record.get("envelope_from")) or helo.lower()
        client = str(record.get("client_ip") or "")
        if action in REFUSED:
            self.refused_domains[sender_domain] += 1
            self.refused_clients[client] += 1
        if record.get("rescued"):
            self.rescued[sender_domain] += 1
        if mailfrom_result == "temperror":
            self.temperrors[sender_domain] += 1
        elif helo_result == "temperror":
            self.temperrors[helo.lower()] += 1
        if mailfrom_result in FORWARD_FAILURES and sender_domain and client:
            self._failing[client][self._org(sender_domain)] += 1
            self._helo[client] = (helo, helo_result == "pass")

    def forwarders(self) -> list[dict[str, Any]]:
        """Clients failing for several unrelated sender domains, most domains first."""
        out: list[dict[str, Any]] = []
        for client, domains in self._failing.items():
            if len(domains) < FORWARDER_DOMAINS:
                continue
            helo, helo_passes = self._helo.get(client, ("", False))
            out.append({"client_ip": client, "helo": helo or None,
                        "sender_domains": sorted(domains), "messages": sum(domains.values()),
                        "whitelist_line": f"Whitelist = {client}",
                        "domain_whitelist_line": (f"Domain_Whitelist = {helo.lower()}"
                                                  if helo and helo_passes else None)})
        out.sort(key=lambda f: (-len(f["sender_domains"]), -f["messages"], f["client_ip"]))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "actions": {a: self.actions[a] for a in (*ACTIONS, *sorted(set(self.actions) - set(ACTIONS)))},
            "helo_results": _top(self.helo_results),
            "mailfrom_results": _top(self.mailfrom_results),
            "refused": {"messages": sum(self.actions[a] for a in REFUSED),
                        "by_sender_domain": _top(self.refused_domains),
                        "by_client": _top(self.refused_clients)},
            "probable_forwarders": self.forwarders(),
            "rescued": {"messages": sum(self.rescued.values()),
                        "by_sender_domain": _top(self.rescued)},
            "temperrors": {"messages": sum(self.temperrors.values()),
                           "by_domain": _top(self.temperrors)},
            "not_replayable": {"messages": self.actions["not-replayable"],
                               "by_reason": _top(self.not_replayable)},
            "note": NOTE,
        }

    def render(self) -> str:
        """The summary for a person: counts, then what to look at, then the caveat."""
        s = self.to_json()

        def counts(mapping: Mapping[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in mapping.items()) or "none"

        def listing(title: str, mapping: Mapping[str, int]) -> list[str]:
            if not mapping:
                return []
            items = list(mapping.items())
            lines = [f"  {title}:"] + [f"    {v:6d}  {k or '(none)'}" for k, v in items[:SHOWN]]
            if len(items) > SHOWN:
                lines.append(f"    ... and {len(items) - SHOWN} more (--json lists all)")
            return lines

        lines = [f"Messages: {s['messages']}",
                 f"Actions: {counts(s['actions'])}",
                 f"HELO results: {counts(s['helo_results'])}",
                 f"MAIL FROM results: {counts(s['mailfrom_results'])}",
                 f"Would be refused: {s['refused']['messages']}"]
        lines += listing("by sender domain", s["refused"]["by_sender_domain"])
        lines += listing("by client", s["refused"]["by_client"])
        forwarders = s["probable_forwarders"]
        lines.append(f"Probable forwarders (fail SPF for {FORWARDER_DOMAINS} or more unrelated "
                     f"sender domains): {len(forwarders)}")
        for f in forwarders[:SHOWN]:
            lines.append(f"  {f['client_ip']} (HELO {f['helo'] or '-'}): {f['messages']} messages, "
                         f"{len(f['sender_domains'])} domains: "
                         + ", ".join(f["sender_domains"][:5])
                         + (", ..." if len(f["sender_domains"]) > 5 else ""))
            lines.append(f"    to exempt it: {f['whitelist_line']}")
            if f["domain_whitelist_line"]:
                lines.append(f"    or, every host its HELO name's record authorizes: "
                             f"{f['domain_whitelist_line']}")
        if forwarders:
            lines.append("  (add the addresses to an existing Whitelist line: a key given "
                         "twice is an error)")
        lines.append(f"Rescued by DKIM_Rescue: {s['rescued']['messages']}")
        lines += listing("by sender domain", s["rescued"]["by_sender_domain"])
        lines.append(f"Temperrors (DNS did not answer): {s['temperrors']['messages']}")
        lines += listing("by domain", s["temperrors"]["by_domain"])
        lines.append(f"Not replayable: {s['not_replayable']['messages']}")
        lines += listing("by reason", s["not_replayable"]["by_reason"])
        lines.append(f"Note: {NOTE}.")
        return "\n".join(lines)
