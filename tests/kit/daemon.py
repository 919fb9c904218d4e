"""A real ``spfmilter`` daemon for tests, soak and fuzz: its own config, socket and log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from tests.kit import ROOT
from tests.kit.wait import wait_for


class SpfmilterProcess:
    """``python -m spfmilter -c CONF --log stderr`` with ``Socket`` in its own folder."""

    def __init__(self, workdir: Path, settings: dict[str, str], hide_code: bool = False) -> None:
        """``hide_code``: run from a view of the checkout (and its .venv) that only root
        may read, as from a clone in /root (see :func:`hidden_checkout`)."""
        self.hide_code = hide_code
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path = str(workdir / "spfmilter.sock")
        self.socket_spec = f"unix:{self.socket_path}"
        self.config_path = workdir / "spfmilter.conf"
        self.log_path = workdir / "spfmilter.log"
        # One worker unless a test asks for more (Workers = auto is the default): the
        # tests that look at "the milter process" in /proc then find exactly one.
        settings = {"Workers": "1", **settings}
        lines = [f"Socket = {self.socket_spec}"] + [f"{k} = {v}" for k, v in settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 20.0) -> SpfmilterProcess:
        self._log = open(self.log_path, "ab")
        # its own process group: the supervisor and its workers go down together
        argv = ["-m", "spfmilter", "-c", str(self.config_path), "--log", "stderr"]
        if self.hide_code:
            command = hidden_checkout(self.workdir / "code", argv)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        else:
            command = [sys.executable, *argv]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = proc = subprocess.Popen(
            command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env)
        wait_for(lambda: proc.poll() is not None or "action=start" in self.log_text(),
                 timeout, "spfmilter to start")
        if proc.poll() is not None:
            raise AssertionError(f"spfmilter exited with {proc.returncode}:\n{self.log_text()}")
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        regex = re.compile(pattern)
        return wait_for(lambda: regex.search(self.log_text()), timeout,
                        f"log line matching {pattern!r}")

    def decisions(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if " action=" in line]

    def children(self) -> list[int]:
        assert self.proc is not None
        pid = self.proc.pid
        try:
            return [int(p) for p in
                    Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def worker_pids(self) -> list[int]:
        """The milter workers: the supervisor's children but its metrics process."""
        out = []
        for pid in self.children():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != "spfmilter-stats":
                    out.append(pid)
            except OSError:
                continue
        return out

    def metrics_pid(self) -> int | None:
        others = set(self.children()) - set(self.worker_pids())
        return others.pop() if others else None

    def kill(self) -> None:
        """SIGKILL the supervisor and its workers (the whole process group)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log:
            self._log.close()
        return self.proc.returncode


def hidden_checkout(mountpoint: Path, argv: list[str]) -> list[str]:
    """A command that runs this checkout's Python (its .venv) with ``argv``, from a copy
    of the checkout only root can read: in a private mount namespace (the host's
    mounts do not change), a 0700 tmpfs on ``mountpoint`` gets the checkout bound
    inside it, and the checkout's own path is covered with an empty 0700 tmpfs, so
    neither spfmilter's code nor its libraries are readable by anyone else --
    what a clone in /root (mode 700) is to a daemon that drops to ``UserID``."""
    venv_python = Path(sys.executable)
    try:
        inside = venv_python.relative_to(ROOT)
    except ValueError:
        raise AssertionError(f"the tests' Python ({venv_python}) is not the checkout's .venv: "
                             "run them with .venv/bin/python (make test)") from None
    mountpoint.mkdir(parents=True, exist_ok=True)
    script = ('set -e; mount -t tmpfs -o mode=0700 spfmilter-hidden "$1"; mkdir "$1/c"; '
              'mount --bind "$2" "$1/c"; mount -t tmpfs -o mode=0700 spfmilter-hidden "$2"; '
              'cd "$1/c"; shift 2; exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(mountpoint), str(ROOT), str(mountpoint / "c" / inside), *argv]
