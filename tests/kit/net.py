"""Ports and listeners on loopback."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_listening(port: int, pid: int | None = None, v6: bool = False) -> bool:
    """Is a TCP socket listening on ``port`` in the network namespace of ``pid``
    (default: ours)?  Reads /proc, so it opens no connection (which a milter or
    an MTA would see as a client)."""
    base = f"/proc/{pid}/net" if pid else "/proc/net"
    want = f":{port:04X}"
    try:
        with open(f"{base}/{'tcp6' if v6 else 'tcp'}") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1].endswith(want) and parts[3] == "0A":
                    return True
    except (OSError, StopIteration):
        pass
    return False


def scrape_metrics(port: int, timeout: float = 5.0) -> dict[str, float]:
    """The Prometheus endpoint on 127.0.0.1:``port``: sample name (with labels) -> value."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out
