"""SPF evaluation: pyspf behind one checker, every lookup through spfmilter's Resolver.

(One module although long: the pyspf subclass, the DNS hook and the scheduling of a
message's identities share the one context variable that ties an evaluation to its
resolver and budget; apart, each would reach into the others' private state.)

pyspf looks names up through a module-level hook (``spf.DNSLookup``).
``install()`` points that hook, once at start-up, at a dispatcher that uses
the Resolver of the evaluation in progress (a context variable), so a
process can hold several resolvers (tests, a reload with new name servers)
and pyspf's own uncached driver never runs: an evaluation without the hook
installed is refused, not sent to the network behind our back.
"""

from __future__ import annotations

import contextvars
import ipaddress
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import spf

import spfmilter.checks.spf_memo as spf_memo
from spfmilter.core.addresses import domain_of, parse_ip
from spfmilter.core.decision import NO_CLIENT_ADDRESS, reported
from spfmilter.core.policy import PassAllPolicy
from spfmilter.core.values import RESULTS, Identity, SPFResult
from spfmilter.resolver import (
    CacheOnly,
    Flight,
    NotCached,
    Resolver,
    SlowWatch,
    TempFailure,
    cache_only,
    slow_wait,
    trace,
)

_current: contextvars.ContextVar[Resolver] = contextvars.ContextVar("spfmilter_resolver")
_void_limit: contextvars.ContextVar[int] = contextvars.ContextVar("spfmilter_void_limit",
                                                                  default=2)


class _Ahead:
    """The lookups started ahead of pyspf for one evaluation (see ``_Query.look_ahead``):
    the flight of each key, handed to pyspf's own lookup of it, and the DNS-querying
    terms seen so far, which bound how many are started (RFC 7208 §4.6.4's ten)."""

    def __init__(self, resolver: Resolver, deadline: float) -> None:
        self.resolver = resolver
        self.deadline = deadline
        self.flights: dict[tuple[str, str], Flight] = {}
        self.terms = 0

    def start(self, name: str, qtype: str) -> None:
        """Look ``name`` up ahead, as pyspf will ask for it (lower case, no final dot);
        a name pyspf would not ask for (an empty or overlong label) is left alone."""
        name = (name[:-1] if name.endswith(".") else name).lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return
        key = (name, qtype)
        if key not in self.flights:
            flight = self.resolver.ahead(name, qtype, self.deadline, self)
            if flight is not None:
                self.flights[key] = flight

    def close(self) -> None:
        """Give up the queries sent ahead that pyspf never asked for (it stopped at a
        match or an error first): their sockets close, their answers go unread."""
        for key, flight in self.flights.items():
            self.resolver.give_up(key, flight, self)
        self.flights.clear()


_ahead: contextvars.ContextVar[_Ahead | None] = contextvars.ContextVar("spfmilter_ahead",
                                                                       default=None)


class _VoidLimit:
    """What pyspf's module-wide ``MAX_VOID_LOOKUPS`` reads as: the Void_Limit of the
    evaluation in progress (RFC 7208 §4.6.4).  pyspf compares its count with that
    global and prints it with %d; this object answers both with the current
    evaluation's own limit, so no evaluation rewrites a global for the process."""

    def __int__(self) -> int:
        return _void_limit.get()

    __index__ = __int__

    def __lt__(self, other: int) -> bool:
        return _void_limit.get() < other

    def __gt__(self, other: int) -> bool:
        return _void_limit.get() > other

    def __le__(self, other: int) -> bool:
        return _void_limit.get() <= other

    def __ge__(self, other: int) -> bool:
        return _void_limit.get() >= other

    def __repr__(self) -> str:
        return f"Void_Limit({_void_limit.get()})"


def _lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20.0) -> list[Any]:
    try:
        resolver = _current.get()
    except LookupError:  # pragma: no cover - only reachable if pyspf is used directly
        raise spf.TempError("spfmilter: no resolver for this evaluation") from None
    ahead = _ahead.get()
    flight = ahead.flights.pop((name, qtype), None) if ahead is not None else None
    try:
        return resolver.records(name, qtype, timeout, flight)
    except TempFailure as exc:
        raise spf.TempError(str(exc)) from None


_VOID_LIMIT = _VoidLimit()


def install() -> None:
    """Route pyspf's DNS lookups through spfmilter's resolvers and its void-lookup
    limit through each evaluation's own setting (idempotent; once at start-up)."""
    spf.DNSLookup = _lookup
    spf.MAX_VOID_LOOKUPS = _VOID_LIMIT


def installed() -> bool:
    return spf.DNSLookup is _lookup and spf.MAX_VOID_LOOKUPS is _VOID_LIMIT


class _Memo:
    """A bounded dict for values that never go stale (pure functions of their key)."""

    def __init__(self, size: int) -> None:
        self.data: dict[Any, Any] = {}
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        if len(self.data) >= self.size:
            for old in list(self.data)[: self.size // 4]:  # oldest quarter
                self.data.pop(old, None)
        self.data[key] = value


_networks = _Memo(4096)       # (address or CIDR text, prefix) -> ipaddress network
_mechanisms = _Memo(4096)     # (term, domain, ip version) -> validate_mechanism's tuple
_client_ips = _Memo(1024)     # client address text -> what pyspf's set_ip sets from it
# (record, domain, ip version) -> its networks.  Bounded in entries and in
# networks per entry (a longer record is pyspf's to walk), so records published to
# fill memory keep it bounded: at most 256 entries of at most 100 networks.
_address_lists = _Memo(256)
# The same key -> False for a record that is no address list (most records: every
# sender domain's own), kept apart so that they never push the lists out of theirs;
# only records of at most _MAX_NOT_LISTED characters are kept (a longer one is found
# no list again).
_not_lists = _Memo(4096)
_MAX_NOT_LISTED = 512
# (network, or None for ``all``; the term; its result) in record order
_Listed = list[tuple["ipaddress.IPv4Network | ipaddress.IPv6Network | None", str, str]]
# the list, and whether its pass terms together cover every address of the client's version
_AddressList = tuple[_Listed, bool]
_MAX_LISTED = 100
_LIST_TERM = re.compile(r"[-+~?]?(?:ip4|ip6|all)(?:[:/][^%=]*)?\Z", re.IGNORECASE)
_SET_IP_ATTRS = ("iplist", "ipaddr", "c", "A", "v", "i", "cidrmax")


# A/MX with a prefix: ``a/0`` for IPv4, ``a//0`` (dual CIDR) for IPv6.
_A_MX = re.compile(r"(?:a|mx)(?::[^/]*)?(?:/(\d+))?(?://(\d+))?\Z")
_ZERO_PREFIX = re.compile(r"/0+\Z")
_INCLUDE = re.compile(r"\+?include:", re.IGNORECASE)
# The kinds of term that make pyspf look something up (and count toward its ten), told
# apart without expanding a macro: the name before ":" or "/", after any qualifier.
_LOOKUP_KIND = re.compile(r"[-+~?]?(include|a|mx|ptr|exists)(?:[:/]|\Z)", re.IGNORECASE)


def _network(text: str, prefix: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network of an address (an A/AAAA/MX answer, an ip4:/ip6: term) at a prefix
    length, kept (ValueError for text that is no address); one parse for the ranges that
    many records list."""
    network = _networks.data.get((text, prefix))
    if network is None:
        network = ipaddress.ip_network(text).supernet(new_prefix=prefix)
        _networks.put((text, prefix), network)
    return network


def _matches_everything(term: str, ipv6: bool) -> bool:
    """Whether a (passing) term matches every address of the client's IP version: all,
    ip4:/ip6: with a prefix of length 0, a/mx whose prefix for that version is 0."""
    t = term.lower().removeprefix("+")
    if t == "all":
        return True
    if t.startswith("ip4:") or t.startswith("ip6:"):
        return (t[2] == "6") == ipv6 and bool(_ZERO_PREFIX.search(t))
    found = _A_MX.match(t)
    if found is None:
        return False
    prefix = found.group(2) if ipv6 else found.group(1)
    return prefix is not None and int(prefix) == 0


_ANSWER_OF = {"pass": 0, "fail": 1, "softfail": 2, "neutral": 3}


def _answers(listed: _Listed) -> tuple[str, tuple[int, ...]]:
    """An address list's kept-result test by answer (see spf_memo.Test): each term's
    result as a number, and last the result when no term holds the client (neutral)."""
    return ("answer", tuple(_ANSWER_OF[result] for _, _, result in listed)
            + (_ANSWER_OF["neutral"],))


def _covers_all(listed: _Listed) -> bool:
    """Whether the pass terms of an address list (ip4/ip6 networks and ``all``, for one
    IP version) together cover every address of that version."""
    passing = []
    for network, _mech, result in listed:
        if result != "pass":
            continue
        if network is None:
            return True
        passing.append(network)
    if not passing:
        return False
    # networks that hold fewer addresses between them than the whole space cannot cover
    # it: most lists are told apart here, without collapsing them
    space = passing[0].max_prefixlen
    if sum(1 << (space - network.prefixlen) for network in passing) < 1 << space:
        return False
    collapsed = list(ipaddress.collapse_addresses(passing))  # type: ignore[type-var]  # one version
    return len(collapsed) == 1 and collapsed[0].prefixlen == 0


class _Query(spf.query):  # type: ignore[misc]  # pyspf has no type hints
    """pyspf's query, with the sender's domain taken as RFC 7208 §4.3 says and its
    two pure, hot steps memoized; the rest of the logic is pyspf's own.

    * The domain is what follows the *last* "@" (pyspf splits at the first, so
      ``"a@b"@example.com`` was checked as a malformed domain: none instead of
      fail), and one trailing dot is not an empty label (pyspf returned none
      for ``user@example.com.`` without a lookup).  Both let a forged sender
      escape a Fail policy.

    * ``set_ip`` derives the client address's forms (macro values, A or AAAA,
      prefix limit) from its text on every query; they are kept per text.
    * ``cidrmatch`` parses every ip4:/ip6: term and every A/AAAA/MX address
      into an ``ipaddress`` network on every check; the parsed network (a pure
      function of the text and the prefix length) is kept.
    * ``validate_mechanism`` parses and validates each term of a record on
      every check; for a term without macros the outcome is a pure function
      of the term, the current domain and the client's IP version, and is kept.
      Terms with a macro (``%``) and any term that raises are never memoized.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # per recursion level: the term of the last record there that passed every address
        self.passed_all: dict[int, str | None] = {}
        local, at, domain = (self.s or "").rpartition("@")
        if at:
            if domain.endswith(".") and not domain.endswith(".."):
                domain = domain[:-1]
            self.l, self.o, self.d = local or "postmaster", domain, domain

    def set_ip(self, i: str) -> None:
        found = _client_ips.data.get(i)
        if found is None:
            super().set_ip(i)  # raises PermError for a bad address: nothing kept
            if not isinstance(self.iplist, bool):  # "list" mode: a fresh list each time
                return
            found = {name: getattr(self, name) for name in _SET_IP_ATTRS if hasattr(self, name)}
            _client_ips.put(i, found)
        self.__dict__.update(found)

    def cidrmatch(self, ipaddrs: list[str], n: int) -> bool:
        if not isinstance(self.iplist, bool):  # pyspf's "list" mode: keep its own code
            own: bool = super().cidrmatch(ipaddrs, n)
            return own
        client = self.ipaddr
        matched = False
        networks = []
        for ip in ipaddrs:  # all parsed, as pyspf does: a bad one is a PermError even after a match
            try:
                network = _network(ip, n)
            except ValueError as exc:
                raise spf.PermError(str(exc)) from None
            networks.append(network)
            if not matched and client in network:
                matched = True
        recorded = spf_memo.recording.get()
        if recorded is not None:
            recorded.tested("any", networks, int(matched))
        return matched

    def validated_ptrs(self) -> list[str]:
        """RFC 7208 §5.5: a DNS error on the PTR lookup means no match; on the A/AAAA
        lookup of one PTR name, that name is skipped and the search continues.
        (pyspf lets either error end the whole check as temperror.)

        Neither lookup counts toward the void limit (§4.6.4): both names come from
        the client's own reverse DNS, not from the sender's records, and pyspf
        counted them, so a client with three PTR names that do not resolve (or
        none at all, against a record of three ``ptr`` terms) turned the sender's
        fail into permerror -- accepted when PermError_reject is off."""
        self._client_dns = True   # CNAMEs followed from these names are the client's too
        try:
            return self._validated_ptrs()
        finally:
            self._client_dns = False

    def _validated_ptrs(self) -> list[str]:
        limit = spf.MAX_PTR if self.strict else spf.MAX_PTR * 4
        try:
            names = self.dns_ptr(self.i)[:limit]
        except spf.TempError:
            if self.querytime < 0:   # the Lookup_Time budget is spent: that stays temperror
                raise
            return []
        validated = []
        for name in names:
            try:
                addresses = self.dns_a(name, self.A)
            except spf.TempError:
                if self.querytime < 0:
                    raise
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                validated.append(name)
        return validated

    _client_dns = False

    def dns(self, name: str, qtype: str, cnames: Any = None, ignore_void: bool = False) -> Any:
        """pyspf's lookup; one for the client's reverse DNS never counts as void.  An
        MX answer (asked for by an ``mx`` term only) has the addresses of its hosts
        looked up ahead: pyspf asks for each of them in turn right after it."""
        found = super().dns(name, qtype, cnames, ignore_void or self._client_dns)
        if qtype == "MX" and cnames is None and len(found) > 1:
            self._look_ahead_hosts(found)
        return found

    def _look_ahead_hosts(self, mx: list[tuple[int, str]]) -> None:
        """All but the first host pyspf asks for (that one it asks at once itself), as
        far as pyspf goes: not at all for more than MAX_MX hosts (a permerror)."""
        ahead = _ahead.get()
        if ahead is None or self.strict is not True or len(mx) > spf.MAX_MX:
            return
        for _preference, host in sorted(mx)[1:]:
            ahead.start(str(host), self.A)

    def check0(self, spf_record: str, recursion: int) -> tuple[Any, ...]:
        """A record of nothing but ip4:/ip6: terms and ``all`` (the address lists that
        providers' includes publish, often dozens of terms) is walked as a list of
        networks kept per (record, domain, IP version); any other record, and any
        record pyspf would find an error in, is pyspf's own check0."""
        recorded = spf_memo.recording.get()
        if recorded is not None and spf_record:
            recorded.record(spf_record)
        if spf_record and self.strict is True and isinstance(self.iplist, bool):
            key = (spf_record, self.d, self.v)
            kept = _address_lists.data.get(key) or _not_lists.data.get(key)
            if kept is None:
                kept = self._address_list(spf_record)
                if kept is not False:
                    _address_lists.put(key, kept)
                elif len(spf_record) <= _MAX_NOT_LISTED:
                    _not_lists.put(key, kept)
            if not isinstance(kept, bool):
                networks, covers_all = kept
                client = self.ipaddr
                for index, (network, mech, result) in enumerate(networks):
                    if network is None or client in network:
                        break
                else:
                    index, result, mech = -1, "neutral", None   # no match, no redirect: the default
                if recorded is not None:
                    if recursion and not covers_all:
                        # below the top the walk gives back only its result (the mechanism
                        # is the top record's): any network with the same result leads on alike
                        answers = _answers(networks)
                        recorded.tested(answers, [network for network, _, _ in networks],
                                        answers[1][index])
                    else:
                        recorded.tested("first", [network for network, _, _ in networks], index)
                if not recursion:
                    self.mechanism = mech
                if result == "pass" and covers_all:
                    self.passed_all[recursion] = mech
                return (result, 550 if result == "fail" else 250, self.exps[result])
        self.look_ahead(spf_record)
        checked: tuple[Any, ...] = super().check0(spf_record, recursion)
        return checked

    def look_ahead(self, spf_record: str) -> None:
        """Send, ahead of pyspf, the queries of the lookups that this record's terms
        will make it ask for (an include's or redirect's TXT, an ``a`` term's A or AAAA for the
        client's address family, an ``mx`` term's MX), so that an evaluation waits
        for the depth of its record tree rather than for the number of its lookups.

        Only for a record pyspf is evaluating now (check0), in its order, and only
        as far as pyspf can get: no term after an ip4:/ip6: that matches the client
        or after ``all`` (pyspf stops there), nothing from a record with an invalid
        term (pyspf fails it before any lookup), nothing past ten DNS-querying
        terms in the whole evaluation, counted as pyspf counts them (ptr and exists
        too, which are not looked up ahead), so a record of fifty includes starts
        ten lookups.  Terms with a macro are not looked up ahead: expanding one may
        itself ask DNS (%{p}).  pyspf still makes every lookup itself, in its order;
        it finds the answer waiting (``_lookup``), so no result changes."""
        ahead = _ahead.get()
        if ahead is None or not spf_record or self.strict is not True \
                or not isinstance(self.iplist, bool):
            return
        terms = spf_record.split(" ")
        if terms[0].lower() != "v=spf1":
            return
        wanted: list[tuple[str, str, str]] = []   # (term, kind, name)
        redirect = None
        try:
            for term in terms[1:]:
                if not term:
                    continue
                modifier = spf.RE_MODIFIER.split(term)[1:]
                if len(modifier) == 2:
                    if modifier[0] == "redirect" and "%" not in modifier[1]:
                        redirect = self.expand_domain(modifier[1])
                    continue
                if "%" in term:
                    found = _LOOKUP_KIND.match(term)
                    if found is not None:
                        wanted.append((term, found.group(1).lower(), ""))
                    continue
                _mech, kind, arg, cidr, _result = self.validate_mechanism(term)
                if kind in ("ip4", "ip6"):
                    if (kind == "ip4") == (self.v == "in-addr") and \
                            self.ipaddr in _network(arg, cidr):
                        break
                    continue
                if kind == "all":
                    break
                wanted.append((term, kind, arg))
            else:
                if redirect:
                    wanted.append(("redirect", "redirect", redirect))
        except Exception:   # pyspf fails this record before it looks anything up
            return
        for term, kind, name in wanted:   # (an mx term's hosts: see dns)
            ahead.terms += 1
            if ahead.terms > spf.MAX_LOOKUP:
                return
            if "%" in term or kind in ("ptr", "exists"):
                continue
            qtype: str = {"include": "TXT", "redirect": "TXT", "mx": "MX"}.get(kind) or self.A
            ahead.start(name, qtype)

    def check1(self, spf_record: str, domain: str, recursion: int) -> tuple[Any, ...]:
        self.passed_all[recursion] = None   # until this record passes every address
        checked: tuple[Any, ...] = super().check1(spf_record, domain, recursion)
        return checked

    def authorizes_all(self) -> str | None:
        """The term of this check's pass when the record authorizes every address of the
        client's IP version: the matching term itself (``+all``, ``ip4:0.0.0.0/0``,
        ``a/0``), an address list whose pass terms cover everything, or an include
        of such a list.  (A record found deeper than one include is not looked into.)"""
        mech = self.mechanism
        if not mech:
            return None
        if self.passed_all.get(0) or _matches_everything(mech, self.v == "ip6"):
            return str(mech)
        inner = self.passed_all.get(1)
        if inner and _INCLUDE.match(mech):
            return f"{mech}: {inner}"
        return None

    def _address_list(self, spf_record: str) -> _AddressList | bool:
        """[(network or None for ``all``, term, result)] in record order, as far as
        pyspf's loop would go for this client's IP version, and whether its pass
        terms together cover every address of that version; False when the record
        is anything else or any of its terms is invalid."""
        terms = spf_record.split(" ")
        if terms[0].lower() != "v=spf1":
            return False
        if len(terms) > _MAX_LISTED + 1:
            return False
        out: _Listed = []
        done = False
        for term in terms[1:]:
            if not term:
                continue
            if not _LIST_TERM.match(term):
                return False
            try:  # every term is validated, as pyspf does before evaluating any
                mech, kind, arg, cidr, result = self.validate_mechanism(term)
            except spf.PermError:
                return False
            if done:
                continue
            if kind == "all":
                out.append((None, mech, result))
                done = True
            elif (kind == "ip4") == (self.v == "in-addr"):  # only the client's own version
                try:
                    network = _network(arg, cidr)
                except ValueError:
                    return False
                out.append((network, mech, result))
        return out, _covers_all(out)

    def validate_mechanism(self, mech: str) -> tuple[Any, ...]:
        found: tuple[Any, ...] | None
        if "%" in mech or self.strict is not True:
            found = super().validate_mechanism(mech)
            return found
        key = (mech, self.d, self.v)
        found = _mechanisms.data.get(key)
        if found is None:
            found = super().validate_mechanism(mech)
            _mechanisms.put(key, found)
        return found


def evaluate(identity: Identity, ip: str, sender: str, helo: str, *, resolver: Resolver,
             receiver: str, lookup_time: float, void_limit: int, local_rules: str = "",
             best_guess: str = "") -> SPFResult:
    """Evaluate one identity per RFC 7208.

    ``identity`` is "helo" (sender is ignored; postmaster@helo is checked) or
    "mailfrom" (an empty sender is checked as postmaster@helo, RFC 7208 §2.4).
    Never raises for bad input: a malformed address is the RFC's none/permerror.
    ``local_rules`` (mechanisms) are tried before the domain's record: a match
    is a pass by local policy.  ``best_guess`` (a record) is evaluated for a
    domain that publishes none; its outcome is reported, the result stays none.
    On cached answers alone (``cache_only``), the result of an earlier evaluation for a
    client that takes the same path through the same records is taken (``spf_memo``).
    """
    if identity not in ("helo", "mailfrom"):
        raise ValueError(identity)
    if not installed():
        raise RuntimeError("spfmilter.checks.spf.install() was not called at start-up")
    helo = helo or ""
    if identity == "helo" or not sender:
        checked = f"postmaster@{helo}" if helo else ""
    else:
        checked = sender
    if not checked or not domain_of(checked):
        return SPFResult(identity, "none", checked, "", "no identity to check", False)
    if parse_ip(ip) is None:  # nothing to check against: none, and why (both front ends alike)
        return SPFResult(identity, "none", checked, domain_of(checked), NO_CLIENT_ADDRESS, False,
                         note=NO_CLIENT_ADDRESS)
    if lookup_time <= 0.001:  # the message's Lookup_Time is spent (pyspf reads 0 as "no limit")
        return SPFResult(identity, "temperror", checked, domain_of(checked),
                         "SPF Temporary Error: Lookup_Time exceeded", False)
    attempt = cache_only.get()
    if attempt is None or trace.get() is not None or "@" not in checked:
        return _evaluate(identity, ip, checked, helo, resolver, receiver, lookup_time,
                         void_limit, local_rules, best_guess)
    # on cached answers alone: a result kept for this client's kind, or one to keep
    started = time.monotonic()
    memo = _memo_of(resolver)
    client = parse_ip(ip)    # as pyspf's set_ip takes it: an IPv4-mapped address is IPv4
    assert client is not None
    domain = domain_of(checked)
    key = (identity, domain, client.version, receiver, lookup_time, void_limit, local_rules,
           best_guess)
    kept = memo.find(key, client, attempt)
    if kept is not None:
        return _copied(kept, sender=checked, domain=domain, seconds=time.monotonic() - started)
    recorded = spf_memo.Recording()
    mark = attempt.mark()
    token = spf_memo.recording.set(recorded)
    try:
        result = _evaluate(identity, ip, checked, helo, resolver, receiver, lookup_time,
                           void_limit, local_rules, best_guess)
    finally:
        spf_memo.recording.reset(token)
    if recorded.keepable and not attempt.missed and result.result != "temperror":
        memo.keep(key, recorded.tests, result, attempt.used_since(mark))
    return result


def _copied(result: SPFResult, **changes: object) -> SPFResult:
    """``dataclasses.replace`` without its walk over the fields' definitions (a kept
    result is copied for every message it answers): a frozen SPFResult has no
    ``__post_init__``, so its fields are all there is to copy."""
    copy = object.__new__(SPFResult)
    copy.__dict__.update(result.__dict__, **changes)
    return copy


_memos: weakref.WeakKeyDictionary[Resolver, spf_memo.ResultMemo] = weakref.WeakKeyDictionary()
_memos_lock = threading.Lock()


def _memo_of(resolver: Resolver) -> spf_memo.ResultMemo:
    """The kept results of evaluations on ``resolver``'s cache (see spf_memo)."""
    memo = _memos.get(resolver)
    if memo is None:
        with _memos_lock:
            memo = _memos.setdefault(resolver, spf_memo.ResultMemo())
    return memo


def _evaluate(identity: Identity, ip: str, checked: str, helo: str, resolver: Resolver,
              receiver: str, lookup_time: float, void_limit: int, local_rules: str,
              best_guess: str) -> SPFResult:
    token, limit_token = _current.set(resolver), _void_limit.set(void_limit)
    started = time.monotonic()
    # nothing ahead of an attempt on cached answers alone: it asks the network nothing
    ahead_token = _ahead.set(_Ahead(resolver, started + lookup_time)
                             if cache_only.get() is None else None)
    best: str | None = None
    void = 0
    try:
        def query() -> _Query:
            return _Query(i=ip, s=checked, h=helo or "unknown", receiver=receiver,
                          querytime=lookup_time, timeout=lookup_time)
        result = ""
        mechanism: str | None = None
        everything: str | None = None
        if local_rules:
            q = query()
            if q.check(spf=f"v=spf1 {local_rules}")[0] == "pass":
                result, explanation = "pass", "matched Local_Rules"
                mechanism, lookups = f"local:{q.mechanism}", q.lookups
        if not result:
            q = query()
            result, _code, explanation = q.check()
            mechanism, lookups, void = q.mechanism, q.lookups, q.void_lookups
            everything = q.authorizes_all() if result == "pass" else None
            if result == "none" and best_guess:
                # pyspf's best_guess(), without its reliance on state from an earlier check
                best = query().check(spf=best_guess)[0]
                best = "neutral" if best == "permerror" else best
    except spf.TempError as exc:
        result, explanation, mechanism, lookups = "temperror", f"SPF Temporary Error: {exc}", None, 0
    except spf.PermError as exc:
        result, explanation, mechanism, lookups = "permerror", f"SPF Permanent Error: {exc}", None, 0
    finally:
        ahead = _ahead.get()
        if ahead is not None:
            ahead.close()
        _ahead.reset(ahead_token)
        _current.reset(token)
        _void_limit.reset(limit_token)
    result = result.lower()
    if result not in RESULTS:  # pyspf spells some results the RFC 4408 way
        result = {"error": "temperror", "unknown": "permerror"}.get(result, "permerror")
    published = result in ("fail", "softfail", "permerror") and \
        explanation != spf.EXPLANATIONS.get(result) and not explanation.startswith("SPF ")
    return SPFResult(identity, result, checked, domain_of(checked), explanation or "",
                     published, mechanism, lookups, time.monotonic() - started, best, void,
                     authorizes_all=everything if result == "pass" else None)


class _Beside(threading.Thread):
    """One evaluation on a thread of its own, beside the calling thread's (in the
    context it was given: a copy made before that thread's evaluation began)."""

    def __init__(self, call: Callable[[], SPFResult], context: contextvars.Context) -> None:
        super().__init__(name="spf-evaluation", daemon=True)
        self._call = call
        self._context = context
        self._result: SPFResult | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._result = self._context.run(self._call)
        except BaseException as exc:  # handed to the caller, who decides
            self._error = exc

    def result(self) -> SPFResult:
        self.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


#: How long an evaluation may wait for DNS before the evaluations queued behind it are
#: started beside it, each on a thread of its own.
SLOW_START = 0.1


def _from_cache(call: Callable[[], SPFResult]) -> SPFResult | None:
    """``call``'s result if the DNS cache answers every lookup it makes, else None."""
    attempt = CacheOnly()
    token = cache_only.set(attempt)
    try:
        result = call()
    except NotCached:
        return None
    finally:
        cache_only.reset(token)
    if attempt.missed:      # pyspf swallows some errors (exp=): the attempt knows
        return None
    attempt.confirm()
    return result


def each(calls: Sequence[Callable[[], SPFResult]], domains: Sequence[str] = (),
         resolver: Resolver | None = None) -> list[SPFResult]:
    """The results of ``calls`` in order, each within its own budget, and none waiting
    for another's slow DNS.  Why: each identity has its own Lookup_Time, and a message
    must wait about the slowest of them, not their sum.

    The record of each evaluation behind the first that the cache cannot answer
    (``domains``: the domain each call evaluates) is asked for through ``resolver``
    before that first one begins, so its answer is there when its turn comes.

    Threads cost: two evaluations running Python at once contend for the interpreter
    lock, which costs more CPU than a cold evaluation's lookups.  So evaluations the
    cache answers in full run first, inline; the others one after another in this
    thread, and only when one has waited SLOW_START for DNS are the ones behind it
    started beside it, each on a thread of its own."""
    done: list[SPFResult] = []
    if trace.get() is None:       # a trace is read in order: one evaluation at a time
        for call in calls:
            result = _from_cache(call)
            if result is None:
                break
            done.append(result)
    rest = calls[len(done):]
    if resolver is None or len(rest) <= 1 or trace.get() is not None:
        return done + _in_turn(rest)
    ahead = _Ahead(resolver, math.inf)   # each evaluation's own budget bounds its wait
    for domain in domains[len(done) + 1:]:
        ahead.start(domain, "TXT")
    try:
        return done + _in_turn(rest)
    finally:
        ahead.close()


def _in_turn(calls: Sequence[Callable[[], SPFResult]]) -> list[SPFResult]:
    if len(calls) <= 1 or trace.get() is not None:
        return [call() for call in calls]
    rest = calls[1:]
    contexts = [contextvars.copy_context() for _ in rest]   # before this one sets its own
    beside: list[_Beside] = []
    watch = SlowWatch(SLOW_START, lambda: beside.extend(
        _Beside(call, context) for call, context in zip(rest, contexts, strict=True)))
    token = slow_wait.set(watch)
    try:
        first = calls[0]()
    finally:
        slow_wait.reset(token)
    if beside:
        return [first, *(b.result() for b in beside)]
    return [first, *_in_turn(rest)]


class Checker:
    """The SPF checker a transaction runs: ``evaluate`` bound to one resolver and
    the settings that do not change per message (receiver, void limit), its result
    as the core reports it (Pass_All_Records)."""

    def __init__(self, resolver: Resolver, *, receiver: str, void_limit: int,
                 pass_all_records: PassAllPolicy = PassAllPolicy.NEUTRAL) -> None:
        self.resolver = resolver
        self.receiver = receiver
        self.void_limit = void_limit
        self.pass_all_records = pass_all_records

    def __call__(self, identity: Identity, ip: str, sender: str, helo: str, *,
                 lookup_time: float, local_rules: str = "", best_guess: str = "") -> SPFResult:
        return reported(evaluate(identity, ip, sender, helo, resolver=self.resolver,
                                 receiver=self.receiver, lookup_time=lookup_time,
                                 void_limit=self.void_limit, local_rules=local_rules,
                                 best_guess=best_guess), self.pass_all_records)

    def each(self, calls: Sequence[Callable[[], SPFResult]],
             domains: Sequence[str] = ()) -> list[SPFResult]:
        return each(calls, domains, self.resolver)
