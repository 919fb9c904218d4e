"""spfmilter's test kit: the servers, labs and helpers that tests, bench and soak share.

Import it as a package from the repository root (``from tests.kit import ...``;
bench and soak run as ``python -m bench.bench`` / ``python -m soak.soak``):

* :mod:`tests.kit.wait`        -- ``wait_for``: poll a condition with a bound
* :mod:`tests.kit.net`         -- free ports, listening checks
* :mod:`tests.kit.dnsserver`   -- the tests' DNS server (UDP and TCP on loopback)
* :mod:`tests.kit.milterclient`-- the MTA side of the milter protocol (miltertest)
* :mod:`tests.kit.rawmilter`   -- raw milter packets, for what miltertest cannot send
* :mod:`tests.kit.daemon`      -- a real ``spfmilter`` daemon with its own config
* :mod:`tests.kit.mta`         -- private Postfix and Sendmail labs, capture SMTP server
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
#: The zones every test starts from (tests/data/zones.yml).
ZONES = yaml.safe_load((DATA / "zones.yml").read_text())
