"""Run the real spfmilter daemon with a timing probe, for the benchmark.

The probe times ``SPFMilter._evaluate`` (the whole SPF decision of one message:
plan, HELO and MAIL FROM evaluations) and every ``evaluate`` call, inside the
milter process, and serves the samples as JSON on a unix socket named by
$SPFMILTER_BENCH_STATS (each request returns the samples since the last one).
Everything else is the shipped daemon: ``spfmilter.cli.main`` with the given
arguments.  The probe costs two perf_counter() calls per decision.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import spfmilter.milter as sm  # noqa: E402
from spfmilter import daemon  # noqa: E402

_decisions: list[float] = []
_evals: list[tuple[str, float, int]] = []

_orig_evaluate_msg = sm.SPFMilter._evaluate
_orig_evaluate = sm.evaluate


def _timed_evaluate_msg(self):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    try:
        return _orig_evaluate_msg(self)
    finally:
        _decisions.append(time.perf_counter() - t)


def _timed_evaluate(identity, *args, **kwargs):  # type: ignore[no-untyped-def]
    res = _orig_evaluate(identity, *args, **kwargs)
    _evals.append((identity, res.seconds, res.lookups))
    return res


sm.SPFMilter._evaluate = _timed_evaluate_msg
sm.evaluate = _timed_evaluate

if os.environ.get("SPFMILTER_BENCH_NO_LOG") == "1":  # experiment: what the decision log costs
    import logging

    def _quiet(settings, reload_settings, _serve=daemon.serve_milter):  # type: ignore[no-untyped-def]
        logging.getLogger("spfmilter").disabled = True
        return _serve(settings, reload_settings)

    daemon.serve_milter = _quiet


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
            rt = sm.get_runtime()
            conn.sendall(json.dumps({"decisions": decisions, "evals": evals,
                                     "resolver_calls": rt.resolver.stats()["lookups"],
                                     "cache_entries": len(rt.resolver.cache)}).encode())


_orig_serve = daemon.serve_milter


def _serve(settings, reload_settings):  # type: ignore[no-untyped-def]
    path = os.environ.get("SPFMILTER_BENCH_STATS")
    if path:
        threading.Thread(target=_serve_stats, args=(path,), daemon=True).start()
    return _orig_serve(settings, reload_settings)


daemon.serve_milter = _serve

if __name__ == "__main__":
    from spfmilter.cli import main
    sys.exit(main())
