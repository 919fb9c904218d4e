"""Results of SPF evaluations made on cached answers, kept for the next client of the same kind.

Why: once a sender's records are cached, most of a message's CPU is pyspf walking the
same record tree again for every new client address, although the walk can only end in
a few ways.

Why it is exact: an evaluation whose records hold no macro, no ``ptr``, no ``exists``
and no ``exp=`` depends on the client address only through its IP version and through
the outcome of each address test it makes ("is the client in one of these networks",
"which of these networks is the first to hold it"; below the top record, where a list's
walk gives back only its result, "which result does the first network to hold it
give").  Given the same cached answers, the same outcomes take pyspf down the same path
to the same result, lookup and void counts included.  So each (identity, domain, IP
version, settings) has a tree: each inner node is the address test the evaluation made
next, each branch one of its outcomes, each leaf the result and the cache entries the
evaluation read.  A new client is walked down the tree with its own address; a leaf
answers only while every entry it was computed from is still the very one in the cache
(not expired, not replaced: named by its serial, so that a leaf holds no answer the
cache has let go), so a kept result never outlives the records it came from.  A path
not seen yet is evaluated by pyspf and added.

Anything that reads the address in another way (macros expand %{i}, ``ptr`` and
``exists`` look names up from it, an ``exp=`` text may show it) marks the evaluation as
not kept; so does a temperror (it depends on time).
"""

from __future__ import annotations

import contextvars
import ipaddress
from collections.abc import Sequence
from typing import Any

from spfmilter.core.values import SPFResult
from spfmilter.resolver import CacheOnly, Used

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# ("any", networks): whether the client is in one of them (pyspf's cidrmatch);
# ("first", networks or None for ``all``): the index of the first that holds it, -1 if none;
# (("answer", answers), networks): the answer of the first that holds it (answers[i]), or
# the last answer if none does -- for a walk whose outcome is only the result it gives
Test = tuple[Any, tuple[_Network | None, ...]]


# A test's networks as integers, (version, netmask, network address) each, None for
# ``all``: a client is tested against them as one integer, not through ipaddress
Compiled = tuple[tuple[int, int, int] | None, ...]


def compiled(test: Test) -> Compiled:
    return tuple(None if n is None else (n.version, int(n.netmask), int(n.network_address))
                 for n in test[1])


_ANY, _FIRST, _ANSWER = 0, 1, 2


def _mode(test: Test) -> tuple[int, tuple[int, ...]]:
    kind = test[0]
    if kind == "any":
        return _ANY, ()
    if kind == "first":
        return _FIRST, ()
    return _ANSWER, kind[1]


def outcome(test: Test, client: _Address) -> int:
    """The outcome of ``test`` for ``client``, as the evaluation recorded it."""
    mode, answers = _mode(test)
    return _outcome(mode, compiled(test), answers, client.version, int(client))


def _outcome(mode: int, networks: Compiled, answers: tuple[int, ...], version: int,
             value: int) -> int:
    if mode == _ANY:
        for network in networks:
            if network is not None and network[0] == version and value & network[1] == network[2]:
                return 1
        return 0
    for index, network in enumerate(networks):
        if network is None or (network[0] == version and value & network[1] == network[2]):
            return index if mode == _FIRST else answers[index]
    return -1 if mode == _FIRST else answers[-1]


_NOT_KEPT = ("ptr", "exists", "exp=")
_kept_records: dict[str, bool] = {}


def keepable(record: str) -> bool:
    """Whether an evaluation of ``record`` reads the client address only through address
    tests (kept per record text; a pure function of it)."""
    found = _kept_records.get(record)
    if found is None:
        found = "%" not in record and not any(
            term.lower().lstrip("+-~?").startswith(_NOT_KEPT) for term in record.split(" ")[1:])
        if len(_kept_records) >= 4096:
            _kept_records.clear()
        _kept_records[record] = found
    return found


class Recording:
    """What one evaluation did that its result depends on (set in ``recording``)."""

    __slots__ = ("tests", "keepable")

    def __init__(self) -> None:
        self.tests: list[tuple[Test, int]] = []
        self.keepable = True

    def record(self, text: str) -> None:
        """A record pyspf evaluates."""
        if self.keepable and not keepable(text):
            self.keepable = False

    def tested(self, kind: Any, networks: Sequence[_Network | None], result: int) -> None:
        self.tests.append(((kind, tuple(networks)), result))


recording: contextvars.ContextVar[Recording | None] = contextvars.ContextVar(
    "spf_memo_recording", default=None)


class _Leaf:
    __slots__ = ("result", "used", "cache")

    def __init__(self, result: SPFResult, used: Used) -> None:
        self.result = result
        self.used = used
        caches = {cache for cache, _key, _serial in used}
        # the one cache all of them are in (the usual case: checked in one step)
        self.cache = caches.pop() if len(caches) == 1 else None


class _Node:
    __slots__ = ("test", "mode", "answers", "networks", "branches")

    def __init__(self, test: Test, networks: Compiled) -> None:
        self.test = test
        self.mode, self.answers = _mode(test)
        self.networks = networks
        self.branches: dict[int, _Node | _Leaf] = {}


class _Tree:
    __slots__ = ("top", "leaves")

    def __init__(self, top: _Node | _Leaf) -> None:
        self.top = top
        self.leaves = 1


class ResultMemo:
    """The trees of one resolver's cache (a reload's new resolver starts empty), bounded
    in trees, in leaves per tree and in what they hold together (``size``, in references:
    records are the sender's, so one path may test thousands of networks); past that
    bound it starts again empty.  Each new path costs the sender one ordinary
    evaluation, as every message did without it.  Tests and the names of cache entries
    are held once however many paths share them."""

    def __init__(self, trees: int = 4096, leaves: int = 64, size: int = 250_000) -> None:
        self.max_trees = trees
        self.max_leaves = leaves
        self.max_size = size
        self.size = 0
        self._trees: dict[Any, _Tree] = {}
        self._held: dict[Any, Any] = {}   # each test and entry name once: itself
        self._compiled: dict[Test, Compiled] = {}   # each held test's networks as integers

    def _hold(self, item: Any, size: int) -> Any:
        held = self._held.get(item)
        if held is None:
            self._held[item] = held = item
            self.size += size
        return held

    def _hold_test(self, test: Test) -> Test:
        """The test held once, its networks compiled once (they count four references
        each: the three integers and their tuple)."""
        held = self._hold(test, 2 + 2 * len(test[1]))   # (an answer test's answers too)
        if held not in self._compiled:
            self._compiled[held] = compiled(held)
            self.size += 4 * len(held[1])
        return held  # type: ignore[no-any-return]

    def find(self, key: Any, client: _Address, attempt: CacheOnly) -> SPFResult | None:
        """The kept result for ``client``, if its path is known and every answer it was
        computed from is still in the cache (then counted as used by ``attempt``)."""
        tree = self._trees.get(key)
        if tree is None:
            return None
        version, value = client.version, int(client)
        node: _Node | _Leaf | None = tree.top
        while type(node) is _Node:
            node = node.branches.get(_outcome(node.mode, node.networks, node.answers, version,
                                              value))
        if node is None or not attempt.reuse(node.used, node.cache):  # type: ignore[union-attr]
            return None
        return node.result  # type: ignore[union-attr]

    def keep(self, key: Any, tests: Sequence[tuple[Test, int]], result: SPFResult,
             used: Used) -> None:
        if self.size > self.max_size:
            self._trees.clear()
            self._held.clear()
            self._compiled.clear()
            self.size = 0
        used = tuple(self._hold(name, 3) for name in used)
        tests = [(self._hold_test(test), outcome_) for test, outcome_ in tests]
        leaf = _Leaf(result, used)
        self.size += 1 + len(used)
        tree = self._trees.get(key)
        if tree is None:
            if len(self._trees) >= self.max_trees:
                for old in list(self._trees)[: self.max_trees // 4]:  # oldest quarter
                    self._trees.pop(old, None)
            self._trees[key] = _Tree(self._chain(tests, leaf))
            return
        node = tree.top
        for i, (test, result_of_test) in enumerate(tests):
            if type(node) is not _Node or node.test != test:
                break   # the records changed under this tree: it starts again from this path
            below = node.branches.get(result_of_test)
            if below is None:
                if tree.leaves >= self.max_leaves:
                    return
                node.branches[result_of_test] = self._chain(tests[i + 1:], leaf)
                tree.leaves += 1
                return
            if i == len(tests) - 1:
                if type(below) is _Leaf:
                    node.branches[result_of_test] = leaf   # a stale leaf, computed again
                    return
                break
            node = below
        else:
            if type(node) is _Leaf:   # no test at all: the result is the same for every client
                tree.top = leaf
                return
        self._trees[key] = _Tree(self._chain(tests, leaf))

    def _chain(self, tests: Sequence[tuple[Test, int]], leaf: _Leaf) -> _Node | _Leaf:
        """The path of ``tests`` (held) down to ``leaf``."""
        self.size += 2 * len(tests)
        child: _Node | _Leaf = leaf
        for test, result in reversed(tests):
            node = _Node(test, self._compiled[test])
            node.branches[result] = child
            child = node
        return child
