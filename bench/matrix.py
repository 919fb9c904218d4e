"""What the benchmark runs: contenders, concurrencies and Postfix set-ups.

Shared by the measuring code (bench/bench.py) and the documents made from its
results (bench/documents.py), so a table lists exactly what was run, in the
order it was run.
"""

from __future__ import annotations

CONCURRENCY = (1, 16, 64)
MILTER_ORDER = ("spfmilter", "spfmilter-w1", "pyspf-milter", "floor", "shape-floor")
SPFMILTERS = ("spfmilter", "spfmilter-w1")

# (label, milter/socket through which that smtpd port sends its mail; None: no milter)
POSTFIX_SETUPS = [("no milter", None), ("spfmilter unix", "spfmilter/unix"),
                  ("spfmilter-w1 unix", "spfmilter-w1/unix"),
                  ("spfmilter inet", "spfmilter/inet"),
                  ("pyspf-milter unix", "pyspf-milter/unix"), ("pyspf-milter inet", "pyspf-milter/inet"),
                  ("floor unix", "floor/unix"), ("shape-floor unix", "shape-floor/unix")]
