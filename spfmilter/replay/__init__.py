"""``spfmilter replay``: a mail store through the real milter, before refusal is switched on.

Why: the evidence an administrator needs before enforcing SPF is already on
disk -- the delivered mail, whose headers record how each message arrived.
Each message's arrival (``arrival``) is played through SPFMilter with the
given configuration (``run``), and the records add up to the summary
``spfmilter report`` gives for logs (``spfmilter.summary``: the same keys, so
the two compare) that names what would be refused, the probable forwarders
and the lines that exempt them.

Messages are read one at a time (``stores``), and with ``--jobs N`` they are
handed in bounded batches to N processes, each with its own resolver and
cache for all its messages; results come back in the store's order.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from spfmilter.checks import psl
from spfmilter.config import Settings
from spfmilter.core.keyvalue import kv
from spfmilter.replay import run, stores
from spfmilter.resolver import Resolver
from spfmilter.summary import Record, Summary

#: Messages handed to the worker processes per job at a time: enough to keep them
#: busy, few enough that memory does not grow with the store.
BATCH_PER_JOB = 256
_CHUNK = 16
#: MAIL FROM fails from one client for this many unrelated sender domains make it a
#: probable forwarder: a mail store is a smaller sample than weeks of logs.
FORWARDER_DOMAINS = 2
NOTE = "results reflect today's DNS, not the DNS when the mail arrived"


def _resolver(settings: Settings) -> Resolver:
    return Resolver(settings.nameservers, timeout=settings.policy.lookup_time)


# a worker process's own settings, resolver and receiver names
_worker: tuple[Settings, Resolver, tuple[str, ...]] | None = None


def _init(settings: Settings, names: tuple[str, ...]) -> None:
    global _worker
    _worker = (settings, _resolver(settings), names)


def _work(message: stores.Message) -> run.Record:
    assert _worker is not None
    settings, resolver, names = _worker
    return run.replay(settings, resolver, names, message)


def _messages(paths: Iterable[str], errors: list[str]) -> Iterator[stores.Message]:
    for path in paths:
        try:
            yield from stores.read(path)
        except stores.StoreError as exc:
            errors.append(str(exc))
            print(f"spfmilter: replay: {exc}", file=sys.stderr, flush=True)


def _batches(messages: Iterator[stores.Message], size: int) -> Iterator[list[stores.Message]]:
    batch: list[stores.Message] = []
    for message in messages:
        batch.append(message)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def records(settings: Settings, paths: Iterable[str], names: tuple[str, ...], jobs: int,
            errors: list[str]) -> Iterator[run.Record]:
    """Every message's record, in the stores' order."""
    messages = _messages(paths, errors)
    if jobs <= 1:
        resolver = _resolver(settings)
        for message in messages:
            yield run.replay(settings, resolver, names, message)
        return
    # fork: the workers inherit the installed DNS hook and the loaded modules
    with multiprocessing.get_context("fork").Pool(jobs, _init, (settings, names)) as pool:
        for batch in _batches(messages, jobs * BATCH_PER_JOB):
            yield from pool.imap(_work, batch, chunksize=_CHUNK)


def summary_record(record: run.Record) -> Record:
    """A replay record as the shared summary's plain record."""
    sender = record.get("envelope_from") or ""
    return Record(action=str(record.get("action") or "tempfail"),
                  helo_result=record.get("helo_result"),
                  mailfrom_result=record.get("mailfrom_result"),
                  sender_domain=sender.rpartition("@")[2].lower(),
                  client_ip=record.get("client_ip") or "", helo=record.get("helo") or "",
                  rescued=True if record.get("rescued") else None,
                  error=(record.get("reply") or None) if record.get("action") == "tempfail"
                  else None,
                  reason=record.get("reason") or None)


def new_summary() -> Summary:
    """The summary replay fills: organizational domains by the public suffix list."""
    return Summary(org=psl.organizational_domain, forwarder_domains=FORWARDER_DOMAINS,
                   note=NOTE)


def line(record: run.Record) -> str:
    """The text line for one message."""
    return kv(source=record["source"], client=record["client_ip"], helo=record["helo"],
              **{"from": None if record["envelope_from"] is None
                 else f"<{record['envelope_from']}>"},
              helo_result=record["helo_result"], mailfrom_result=record["mailfrom_result"],
              action=record["action"], rescued="yes" if record["rescued"] else None,
              reply=record["reply"] or None, reason=record["reason"] or None)


def main(settings: Settings, paths: list[str], receivers: list[str] | None, as_json: bool,
         jobs: int | None, out: TextIO = sys.stdout) -> int:
    """Replay ``paths``; 1 when a store could not be read (the others are still replayed)."""
    # the milter's decision lines are what this command prints, not log noise
    logging.getLogger("spfmilter").addHandler(logging.NullHandler())
    logging.getLogger("spfmilter").propagate = False
    settings = run.enforcing(settings)
    names = run.receivers(settings, receivers)
    errors: list[str] = []
    summary = new_summary()
    if not as_json:
        print(f"Replaying with refusal on (TestOnly = 1); arrival headers written by "
              f"{', '.join(names)}; {NOTE}.", file=out)
    for record in records(settings, paths, names, jobs or os.cpu_count() or 1, errors):
        summary.add(summary_record(record))
        print(json.dumps(record) if as_json else line(record), file=out)
    if as_json:
        print(json.dumps({"summary": summary.to_json()}), file=out)
    else:
        print("", file=out)
        print(summary.render(), file=out)
    out.flush()
    return 1 if errors else 0
