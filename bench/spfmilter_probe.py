"""Run the real spfmilter daemon with a timing probe, for the benchmark.

The probe times ``Transaction.evaluate`` (the whole SPF decision of one
message: plan, HELO and MAIL FROM evaluations) and every SPF evaluation,
inside each worker process, and serves the samples as JSON on a unix socket
named by $SPFMILTER_BENCH_STATS plus ``.PID`` (each request returns the samples
since the last one).  Everything else is the shipped daemon: ``spfmilter.cli.main`` with
the given arguments.  The probe costs two perf_counter() calls per decision.
Run as ``python -m bench.spfmilter_probe ARGS`` from the repository root.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any

from spfmilter import daemon, runtime
from spfmilter.checks import spf as spf_check
from spfmilter.core.transaction import Transaction

_decisions: list[float] = []
_evals: list[tuple[str, float, int]] = []

_orig_txn_evaluate = Transaction.evaluate
_orig_evaluate = spf_check.evaluate


def _timed_txn_evaluate(self: Transaction, check: Any) -> None:
    if self.plan is not None:
        return
    t = time.perf_counter()
    try:
        _orig_txn_evaluate(self, check)
    finally:
        _decisions.append(time.perf_counter() - t)


def _timed_evaluate(identity: Any, *args: Any, **kwargs: Any) -> Any:
    res = _orig_evaluate(identity, *args, **kwargs)
    _evals.append((identity, res.seconds, res.lookups))
    return res


Transaction.evaluate = _timed_txn_evaluate  # type: ignore[method-assign]
spf_check.evaluate = _timed_evaluate

if os.environ.get("SPFMILTER_BENCH_NO_LOG") == "1":  # experiment: what the decision log costs
    import logging

    logging.getLogger("spfmilter").disabled = True


def _serve_stats(path: str) -> None:
    global _decisions, _evals
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    while True:
        conn, _ = srv.accept()
        with conn:
            decisions, _decisions = _decisions, []
            evals, _evals = _evals, []
            rt = runtime.current()
            conn.sendall(json.dumps({"decisions": decisions, "evals": evals,
                                     "resolver_calls": rt.resolver.stats()["lookups"],
                                     "cache_entries": len(rt.resolver.cache)}).encode())


_orig_serve = daemon.serve_worker


def _serve(*args: Any, **kwargs: Any) -> int:
    path = os.environ.get("SPFMILTER_BENCH_STATS")
    if path:  # one socket per worker: the benchmark asks them all
        threading.Thread(target=_serve_stats, args=(f"{path}.{os.getpid()}",),
                         daemon=True).start()
    return _orig_serve(*args, **kwargs)


daemon.serve_worker = _serve

if __name__ == "__main__":
    from spfmilter.cli import main
    sys.exit(main())
