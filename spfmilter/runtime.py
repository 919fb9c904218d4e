"""What a process decides with right now: the settings, the resolver and the checkers.

Why a process-wide current value: libmilter creates the per-connection
milter object itself (no arguments), and the policy service's connections
come and go on threads of their own; both take the current runtime when a
connection starts, so a reload applies to new connections only while those
in flight finish with what they started with.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from spfmilter import config as cfg
from spfmilter import log, metrics
from spfmilter import resolver as resolvermod
from spfmilter.checks import dkim, psl
from spfmilter.checks.spf import Checker
from spfmilter.engine import Engine, Observer, Reporter
from spfmilter.resolver import Resolver


@dataclass(frozen=True)
class Runtime:
    settings: cfg.Settings
    resolver: Resolver
    spf: Checker
    dkim: dkim.Checker
    org_domain: Callable[[str], str] = psl.organizational_domain
    observers: tuple[Observer, ...] = ()
    engine: Engine = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine", Engine(self.settings.policy, self.spf, self.dkim,
                                                  self.org_domain, self.observers))

    @classmethod
    def create(cls, settings: cfg.Settings, previous: Runtime | None = None,
               resolver: Resolver | None = None,
               observers: tuple[Observer, ...] | None = None) -> Runtime:
        """A runtime for ``settings``; it keeps the previous resolver (and its cache)
        when the DNS settings did not change, so a reload does not start cold --
        unless the servers come from resolv.conf and the file names others now.
        Its engine reports to ``observers``: by default the metrics and the log."""
        if resolver is None:
            if previous is not None and _same_dns(previous.settings, settings) \
                    and not previous.resolver.system_servers_changed():
                resolver = previous.resolver
            else:
                resolver = Resolver(settings.nameservers, timeout=settings.policy.lookup_time)
        return cls(settings, resolver,
                   Checker(resolver, receiver=settings.policy.authserv_id,
                           void_limit=settings.policy.void_limit,
                           pass_all_records=settings.policy.pass_all_records),
                   dkim.Checker(resolver),
                   observers=observers if observers is not None else standard_observers(settings))


def standard_observers(settings: cfg.Settings, *,
                       counting: bool | None = None) -> tuple[Observer, ...]:
    """The metrics, then the log: a count is made before the line that reports it is
    written, so whoever waits for the line finds it counted.  The metrics only when
    ``Metrics`` is set (or ``counting`` says so): without the endpoint no one can read a
    count, so no message pays for keeping one."""
    lines = log.DecisionLog(log_queue_id=settings.log_queue_id)
    if counting if counting is not None else settings.metrics is not None:
        return (metrics.Counting(), lines)
    return (lines,)


def preload() -> None:
    """Load now every module and data file the checks would otherwise load on first use.

    Why: a daemon started as root drops to ``UserID`` before it serves; what
    Python or a library imports after that is read with that user's rights, and
    spfmilter may be installed where it cannot read (a checkout or venv under
    /root).  Such an import fails in the middle of a transaction (dnspython
    even hides it: the record is decoded as opaque data).  So the daemon calls
    this as root, before the drop."""
    resolvermod.preload()
    psl.preload()


def _same_dns(a: cfg.Settings, b: cfg.Settings) -> bool:
    return (a.nameservers, a.policy.lookup_time) == (b.nameservers, b.policy.lookup_time)


_lock = threading.Lock()
_current: Runtime | None = None


def install(runtime: Runtime) -> Runtime | None:
    """Make ``runtime`` the current one; returns the one it replaces."""
    global _current
    with _lock:
        previous, _current = _current, runtime
    return previous


def current() -> Runtime:
    with _lock:
        if _current is None:
            raise RuntimeError("spfmilter runtime not configured")
        return _current


def current_or_none() -> Runtime | None:
    with _lock:
        return _current


def reporter() -> Reporter:
    """Where a front end reports what it met outside a connection's session (a listener
    tuned, a server started or stopped, bad input before a message, the gauge of
    connections in flight): the current runtime's engine.  Before one is installed
    (a listener opened by the supervisor, ``spfmilter check`` setting up), the standard
    observers of default settings, counting too (nothing says yet whether ``Metrics``
    is set): the same line and the same count, never lost."""
    current = current_or_none()
    return current.engine if current is not None else _before_any_runtime()


@functools.cache
def _before_any_runtime() -> Reporter:
    return Reporter(standard_observers(cfg.Settings(), counting=True))
