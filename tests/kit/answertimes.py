"""How long a milter takes to answer an ordinary client while something else loads it.

``AnswerTimes(socket_path)`` runs a client in a process of its own (so nothing the
test process does delays it): it repeats one short transaction (negotiation,
CONNECT, HELO, MAIL, RCPT) and reports, for each, when it started, how long it
took in all and its slowest single answer.  The test then asks which of them
overlapped a time window (``during``), after waiting until one started after it,
so none still in flight is missed.

Run as ``python -m tests.kit.answertimes SOCKET CLIENT_IP HELO SENDER``: it
stops when its stdin closes.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from tests.kit import ROOT
from tests.kit.wait import wait_for


@dataclass(frozen=True)
class Sample:
    started: float      # time.monotonic(), the same clock in every process
    took: float         # the whole transaction
    slowest: float      # its slowest single answer


class AnswerTimes:
    def __init__(self, socket_path: str, client_ip: str = "192.0.2.10", helo: str = "helo.test",
                 sender: str = "user@allowed.test") -> None:
        self.samples: list[Sample] = []
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kit.answertimes", socket_path, client_ip, helo, sender],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: len(self.samples) >= 3, 20, "the ordinary client's first answers")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            started, took, slowest = map(float, line.split())
            self.samples.append(Sample(started, took, slowest))

    def during(self, start: float, end: float, timeout: float = 60) -> list[Sample]:
        """The transactions that overlapped [start, end]."""
        wait_for(lambda: any(s.started > end for s in self.samples), timeout,
                 "an ordinary transaction started after the window")
        return [s for s in self.samples if s.started <= end and s.started + s.took >= start]

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        self._reader.join(10)

    def __enter__(self) -> AnswerTimes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(socket_path: str, client_ip: str, helo: str, sender: str) -> None:
    from tests.kit.milterclient import MilterSession

    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.is_set():
        started = last = time.monotonic()
        slowest = 0.0

        def answered() -> None:
            nonlocal last, slowest
            now = time.monotonic()
            slowest, last = max(slowest, now - last), now

        with MilterSession(socket_path) as s:      # options negotiated
            answered()
            for step in (lambda: s.connect(client_ip), lambda: s.helo(helo),
                         lambda: s.mail(sender), lambda: s.rcpt("rcpt@mx.test")):
                step()
                answered()
        print(started, time.monotonic() - started, slowest, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
