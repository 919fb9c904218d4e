"""Metrics are made by ``metrics.setup``, not at import: the order of imports no longer
decides whether a process counts into the multiprocess files.

In a fresh interpreter (the choice of storage is process-wide), as the daemon does it."""

from __future__ import annotations

import subprocess
import sys

from tests.kit import ROOT

_COUNT_AFTER_SETUP = """
import sys
from spfmilter.frontends import milter, policy   # the front ends first, as any order may
from spfmilter import metrics
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
metrics.setup(sys.argv[1])
metrics.current().transactions.inc(3)
milter.connections.opened()
registry = CollectorRegistry()
MultiProcessCollector(registry)
print(registry.get_sample_value("spfmilter_transactions_total"),
      registry.get_sample_value("spfmilter_connections_in_flight"))
"""


def _run(code: str, *args: str) -> str:
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_setup_after_the_front_ends_are_imported_counts_into_the_folder(tmp_path):
    assert _run(_COUNT_AFTER_SETUP, str(tmp_path)) == "3.0 1.0"
    assert {"counter", "gauge"} <= {p.name.split("_")[0] for p in tmp_path.iterdir()}


def test_without_setup_a_process_counts_in_memory_on_first_use(tmp_path):
    out = _run("from spfmilter import metrics\n"
               "import os\n"
               "metrics.TRANSACTIONS.inc()\n"
               "print(metrics.TRANSACTIONS._value.get(), metrics.MULTIPROC_ENV in os.environ)\n")
    assert out == "1.0 False"
