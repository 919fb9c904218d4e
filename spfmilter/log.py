"""Logging: one key=value line per decision, to syslog's mail facility or stderr.

The decision line mirrors what python policyd-spf writes to the mail log, so
the greps administrators already use keep working; values are quoted and
stripped of control characters because they come from the SMTP client.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
import sys
import time
from collections.abc import Mapping

from spfmilter.core.keyvalue import kv as kv  # the lines' form; spfmilter.log.kv for callers
from spfmilter.core.transaction import Transaction
from spfmilter.core.values import Verdict

LOGGER_NAME = "spfmilter"
log = logging.getLogger(LOGGER_NAME)


class _Formatter(logging.Formatter):
    """logging's own format, with the date and time written once per second: every
    decision line needs them, and each is a localtime and a strftime otherwise."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        kept = self._second
        if kept[0] != second:
            kept = (second, time.strftime(self.default_time_format, self.converter(second)))
            self._second = kept
        return f"{kept[1]},{int(record.msecs):03d}"   # logging's default_msec_format


def setup(debug_level: int = 1, *, stderr: bool | None = None,
          syslog_socket: str = "/dev/log", file: str | None = None,
          protocol_on_stdout: bool = False) -> None:
    """Send our records to syslog (mail facility) when it exists, else to stderr
    (or to ``file``; a policy service under Postfix's spawn has its stderr on the
    protocol's socket, so there auto never means stderr)."""
    # The line names only the process: skip what logging would otherwise gather
    # for every record (the caller's frame and file, the thread object -- which
    # libmilter's threads would each get created as a dummy -- and the
    # multiprocessing name): work paid on every decision line for nothing we print.
    logging._srcfile = None  # documented in logging's "Optimization" section
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger(LOGGER_NAME)
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    use_stderr = stderr if stderr is not None else not os.path.exists(syslog_socket)
    handler: logging.Handler
    if file:
        handler = logging.handlers.WatchedFileHandler(file)
        handler.setFormatter(_Formatter("%(asctime)s spfmilter[%(process)d]: %(message)s"))
    elif use_stderr and stderr is None and protocol_on_stdout and stderr_is_stdout():
        handler = logging.NullHandler()  # only syslog or a file can take them here
    elif use_stderr:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter("%(asctime)s spfmilter[%(process)d]: %(message)s"))
    else:
        handler = logging.handlers.SysLogHandler(
            address=syslog_socket, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        handler.setFormatter(_Formatter("spfmilter[%(process)d]: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug_level >= 2 else logging.INFO)
    root.propagate = False


def stderr_is_stdout() -> bool:
    """True under Postfix's spawn: stdout and stderr are the one client socket."""
    try:
        out, err = os.fstat(1), os.fstat(2)
    except OSError:
        return False
    return stat.S_ISSOCK(err.st_mode) and (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)


def set_level(debug_level: int) -> None:
    """Apply a (reloaded) debugLevel."""
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG if debug_level >= 2 else logging.INFO)


def decision(txn: Transaction, verdict: Verdict, recipient: str, *, log_queue_id: bool,
             **extra: object) -> None:
    """The decision line, the same from every front end (``extra``: where it came from;
    ``log_queue_id``: QueueID, a setting of the service, not of the policy)."""
    if not log.isEnabledFor(logging.INFO):
        return
    h, m = txn.helo_result, txn.mailfrom_result
    main = m or h
    facts = txn.facts
    # the line is the message itself (no arguments): logging formats nothing more into it
    log.info(kv(
        action=verdict.action.value, reason=verdict.reason,
        identity=main.identity if main else None, result=main.result if main else None,
        helo_result=h.result if h else None,
        authorizes_all=(m and m.authorizes_all) or (h and h.authorizes_all) or None,
        client_ip=facts.client_ip, helo=facts.helo, envelope_from=txn.sender,
        relay=txn.connection.client_ip if txn.hop is not None or txn.via_relay else None,
        dkim=" ".join(f"{d.result}:{d.domain}" for d in txn.dkim_results)
        if txn.dkim_results else None,
        rcpt=recipient, receiver=txn.policy.authserv_id,
        queue_id=(txn.queue_id or None) if log_queue_id else None, **extra,
        reply=f"{verdict.reply.code} {verdict.reply.status}" if verdict.reply else None))


class DecisionLog:
    """The engine's observer that writes the lines (see ``engine.Observer``): the
    decision line, and one line for each forged header removed, each message behind
    a trusted relay that could not be checked, each fault answered for (its
    traceback at debug level) and each event a front end reports (bad input, a
    closed client, a start or stop: ``action`` first, then its fields)."""

    def __init__(self, *, log_queue_id: bool) -> None:
        self.log_queue_id = log_queue_id

    def evaluated(self, txn: Transaction) -> None:
        """An evaluation gets no line of its own: each decision line reports it."""

    def decided(self, txn: Transaction, verdict: Verdict, recipient: str,
                extra: Mapping[str, object]) -> None:
        decision(txn, verdict, recipient, log_queue_id=self.log_queue_id, **extra)

    def not_checked(self, txn: Transaction, reason: str) -> None:
        log.warning("%s", kv(action="not-checked", reason=reason, queue_id=txn.queue_id or None))

    def forged_removed(self, txn: Transaction, name: str, index: int, queue_id: str) -> None:
        log.info("%s", kv(action="removed-forged-header", header=name, index=index,
                          queue_id=queue_id or None))

    def fault(self, action: str, error: str, fields: Mapping[str, object],
              exc: BaseException | None) -> None:
        log.error("%s", kv(action=action, error=error, **fields))
        if exc is not None:  # the line says what; the traceback, for debugging, where
            log.debug("traceback", exc_info=exc)

    def event(self, level: int, action: str, fields: Mapping[str, object]) -> None:
        log.log(level, "%s", kv(action=action, **fields))

    def connections_moved(self, by: int) -> None:
        """No line per connection: the metrics' gauge shows them."""
