"""Connections in flight in this process, per front end.

Why a counter of our own: a graceful stop must wait until the connections a
worker serves are done (libmilter and the policy threads do not say), and
the metrics show how many are open.
"""

from __future__ import annotations

import threading
from typing import Protocol


class _Gauge(Protocol):
    def inc(self) -> None: ...
    def dec(self) -> None: ...


class InFlight:
    """Open connections, at most ``limit`` at once (None: no limit), mirrored in ``gauge``."""

    def __init__(self, limit: int | None = None, gauge: _Gauge | None = None) -> None:
        self.limit = limit
        self.gauge = gauge
        self._count = 0
        self._cond = threading.Condition()

    def opened(self) -> bool:
        """Count one more; False (nothing counted) when the limit is reached."""
        with self._cond:
            if self.limit is not None and self._count >= self.limit:
                return False
            self._count += 1
        if self.gauge is not None:
            self.gauge.inc()
        return True

    def closed(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()
        if self.gauge is not None:
            self.gauge.dec()

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def wait_idle(self, timeout: float) -> bool:
        """True once no connection is open; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count <= 0, timeout)
