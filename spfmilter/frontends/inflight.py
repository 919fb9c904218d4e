"""Connections in flight in this process, per front end.

Why a counter of our own: a graceful stop must wait until the connections a
worker serves are done (libmilter and the policy threads do not say), and
the metrics show how many are open.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class InFlight:
    """Open connections, at most ``limit`` at once (None: no limit), each change told
    to ``moved`` (+1, -1: the front end reports it through the current engine, whose
    metrics observer moves the gauge)."""

    def __init__(self, limit: int | None = None,
                 moved: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.moved = moved
        self._count = 0
        self._cond = threading.Condition()

    def opened(self) -> bool:
        """Count one more; False (nothing counted) when the limit is reached."""
        with self._cond:
            if self.limit is not None and self._count >= self.limit:
                return False
            self._count += 1
        if self.moved is not None:
            self.moved(1)
        return True

    def closed(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()
        if self.moved is not None:
            self.moved(-1)

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def wait_idle(self, timeout: float) -> bool:
        """True once no connection is open; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count <= 0, timeout)
