"""A private Postfix for the benchmark's end-to-end runs (one instance, several smtpd ports).

Runs inside the benchmark's own network and mount namespaces (bench.py sets
them up), so it may bind-mount over /etc/postfix/main.cf (to list its config
folder in alternate_config_directories) without touching the host.  Each
milter set-up gets its own smtpd listener on 127.0.0.1 with ``-o
smtpd_milters=...``; everything else is the documented init/postfix-main.cf
(milter protocol, macros, timeouts, default action) plus settings that keep
the measurement about smtpd and the milter: the queue on tmpfs (no disk
fsync), every message delivered to the ``discard`` transport, no DNS, no
peer name lookups, no rate limits.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = ROOT / "init" / "postfix-main.cf"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def snippet_settings() -> list[tuple[str, str]]:
    """``name = value`` settings of init/postfix-main.cf (continuation lines joined)."""
    out: list[tuple[str, str]] = []
    for line in SNIPPET.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
            continue
        name, _, value = line.partition("=")
        out.append((name.strip(), value.strip()))
    return out


def _listening(port: int) -> bool:
    want = f":{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(p[1].endswith(want) and p[3] == "0A" for p in (l.split() for l in list(f)[1:]))


class PostfixLab:
    def __init__(self, workdir: Path, services: dict[str, tuple[int, str]]) -> None:
        """``services``: name -> (port, smtpd_milters value, '' for none)."""
        self.work = workdir
        self.config = workdir / "config"
        self.queue = workdir / "queue"
        self.data = workdir / "data"
        self.log = workdir / "maillog"
        self.services = services

    def start(self, timeout: float = 60) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        for d in (self.config, self.queue, self.data):
            d.mkdir(parents=True)
        _run("mount", "-t", "tmpfs", "-o", "mode=0755,size=512m", "bench-postfix-queue", str(self.queue))
        shutil.chown(self.data, "postfix", "postfix")
        os.chmod(self.data, 0o700)
        default_main = Path("/etc/postfix/main.cf").read_text() if Path("/etc/postfix/main.cf").exists() else ""
        default_main = re.sub(r"(?m)^alternate_config_directories\s*=.*(\n[ \t].*)*\n?", "", default_main)
        private_main = self.work / "default-main.cf"
        private_main.write_text(default_main + f"\nalternate_config_directories = {self.config}\n")
        if not Path("/etc/postfix/main.cf").exists():
            Path("/etc/postfix/main.cf").touch()
        _run("mount", "--bind", str(private_main), "/etc/postfix/main.cf")  # our mount namespace only
        (self.config / "main.cf").write_text("# spfmilter benchmark (bench/postfix_lab.py)\n")
        shutil.copy("/etc/postfix/master.cf", self.config / "master.cf")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.work}",
            "maillog_file": str(self.log),
            "myhostname": "mx.bench.test",
            "mydomain": "bench.test",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "in_flow_delay": "0",
            "relay_domains": "static:ALL",
            "relay_transport": "discard:",
            "default_transport": "discard:",
            "smtp_dns_support_level": "disabled",
            "smtpd_tls_security_level": "none",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtputf8_enable": "no",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_connection_count_limit": "0",
            "default_process_limit": "200",
            "smtpd_error_sleep_time": "0",
        }
        for name, value in snippet_settings():  # the documented milter settings, verbatim
            if name not in ("smtpd_milters", "non_smtpd_milters"):
                settings[name] = value
        settings["smtpd_milters"] = ""
        for name, value in settings.items():
            _run("postconf", "-c", str(self.config), "-e", f"{name} = {value}")
        _run("postconf", "-c", str(self.config), "-M#", "smtp/inet")
        for name, (port, milters) in self.services.items():
            svc = f"127.0.0.1:{port}"
            _run("postconf", "-c", str(self.config), "-M", f"{svc}/inet = {svc} inet n - n - - smtpd")
            _run("postconf", "-c", str(self.config), "-P", f"{svc}/inet/smtpd_milters={milters}")
        _run("postconf", "-c", str(self.config), "-F", "*/*/chroot = n")
        _run("postfix", "-c", str(self.config), "check")
        _run("postfix", "-c", str(self.config), "start")
        deadline = time.monotonic() + timeout
        while not all(_listening(port) for port, _ in self.services.values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix did not listen in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def queue_empty(self) -> bool:
        for sub in ("incoming", "active", "deferred", "maildrop"):
            d = self.queue / sub
            if d.is_dir() and any(p.is_file() for p in d.rglob("*")):
                return False
        return True

    def wait_drained(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue_empty():
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        _run("postfix", "-c", str(self.config), "stop", check=False)
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                break
            time.sleep(0.1)
        _run("umount", "-l", str(self.queue), check=False)
        _run("umount", "-l", "/etc/postfix/main.cf", check=False)
