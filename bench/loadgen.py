"""A lean MTA side of the milter protocol, for load: many connections per process.

It behaves like Postfix's milter client (src/milter/milter8.c): each event's
macros go in front of the event, macros are sent even for an event the milter
asked not to get, events negotiated as no-reply are buffered and written
together with the next event that waits for a reply (one write, as Postfix's
VSTREAM does), every header is preceded by the end-of-header macros, and at
the end of a session ABORT and QUIT go out in one write.  Like Postfix it
flushes what it has buffered when smtpd hands the milter over to cleanup
(after DATA), as a write of its own that gets no reply when the milter asked
for DATA without one, and it does not set TCP_NODELAY.

One transaction = one connection: option negotiation, CONNECT, HELO, MAIL,
RCPT, DATA, headers, end of headers, body, end of message, then ABORT+QUIT.
Its latency runs from connect() to the final end-of-message reply.

``run_worker`` drives ``conc`` connections from one process with a selector
loop and returns plain numbers; ``run`` spreads a load over several processes.
Every loop is bounded by a transaction count and a deadline.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import zones
from spfmilter.milter_protocol import (
    FINAL,
    MODS,
    NOBODY,
    NOCONNECT,
    NODATA,
    NOEOH,
    NOHDRS,
    NOHELO,
    NOMAIL,
    NORCPT,
    NR_BODY,
    NR_CONN,
    NR_DATA,
    NR_EOH,
    NR_HDR,
    NR_HELO,
    NR_MAIL,
    NR_RCPT,
    REFUSALS,
    connect,
    optneg,
    packet,
)
from spfmilter.milter_protocol import macros as stage_macros

HEADERS = [
    ("Received", "from out.example.net (out.example.net [198.19.1.2])\n\tby mx.example.org "
                 "(Postfix) with ESMTPS id 4XyZ1w2Q3rz9sWb\n\tfor <user@example.org>; "
                 "Tue, 25 Nov 2025 10:00:00 +0000 (UTC)"),
    ("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net; s=s1;\n\t"
                       "h=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n\t"
                       "b=dzdVyOfAKCdLXdJOc9G2q8LoXSlEniSbav+yuU4zGeeruD00lszZVoG4ZHRNiYzR"),
    ("From", "Some Sender <user@example.net>"),
    ("To", "Some Recipient <user@example.org>"),
    ("Subject", "Quarterly figures, revised"),
    ("Date", "Tue, 25 Nov 2025 10:00:00 +0000"),
    ("Message-ID", "<20251125100000.12345@out.example.net>"),
    ("MIME-Version", "1.0"),
    ("Content-Type", "text/plain; charset=utf-8"),
]
BODY = (b"Hello,\r\n\r\n" + b"The figures are attached below; nothing in here matters.\r\n" * 34)[:2048]


def macros(stage: bytes, pairs: list[tuple[str, str]]) -> bytes:
    return stage_macros(stage, [(k.encode(), v.encode()) for k, v in pairs])


OPTNEG = optneg()
FLUSH = b"flush"


class NoReply(bytes):
    """A write that gets no reply: the next chunk follows it at once, as a separate write."""


@dataclass
class Plan:
    """The byte chunks of one transaction, split at the events that wait for a reply."""

    chunks: list[bytes]     # each chunk ends with an event that gets a reply
    after_rcpt: int         # index of the first chunk after the one that carries RCPT


def build(tx: zones.Tx, qid: str, protocol: int) -> Plan:
    """The writes a Postfix-like MTA makes for ``tx`` under the negotiated ``protocol``."""
    ip = tx.client_ip
    sender, rcpt = f"<{tx.sender}>", "<postmaster@mx.bench.test>"
    events: list[tuple[bytes, int, int]] = []  # (bytes, skip flag, no-reply flag)
    events.append((macros(b"C", [("j", "mx.bench.test"), ("{daemon_name}", "mx.bench.test"),
                                 ("{daemon_addr}", "127.0.0.1"), ("v", "Postfix 3.7.11"),
                                 ("_", f"unknown [{ip}]")]) , 0, 0))
    events.append((connect(f"[{ip}]".encode(), ip.encode(), 25123), NOCONNECT, NR_CONN))
    events.append((macros(b"H", []), 0, 0))
    events.append((packet(b"H", tx.helo.encode() + b"\0"), NOHELO, NR_HELO))
    events.append((macros(b"M", [("{mail_addr}", tx.sender), ("{mail_host}", tx.sender.rpartition("@")[2]),
                                 ("{mail_mailer}", "smtp")]), 0, 0))
    events.append((packet(b"M", sender.encode() + b"\0"), NOMAIL, NR_MAIL))
    events.append((macros(b"R", [("i", qid), ("{rcpt_addr}", rcpt[1:-1]), ("{rcpt_host}", "mx.bench.test"),
                                 ("{rcpt_mailer}", "smtp")]), 0, 0))
    events.append((packet(b"R", rcpt.encode() + b"\0"), NORCPT, NR_RCPT))
    events.append((macros(b"T", [("i", qid)]), 0, 0))
    events.append((packet(b"T"), NODATA, NR_DATA))
    events.append((FLUSH, 0, 0))  # smtpd hands the milter to cleanup: what is buffered goes out
    eoh_macros = macros(b"L", [("i", qid)])
    for name, value in HEADERS:
        events.append((eoh_macros, 0, 0))
        events.append((packet(b"L", name.encode() + b"\0" + value.encode() + b"\0"), NOHDRS, NR_HDR))
    events.append((macros(b"N", [("i", qid)]), 0, 0))
    events.append((packet(b"N"), NOEOH, NR_EOH))
    events.append((packet(b"B", BODY), NOBODY, NR_BODY))
    events.append((macros(b"E", [("i", qid)]), 0, 0))
    events.append((packet(b"E"), 0, 0))
    chunks, cur = [], b""
    for data, skip, noreply in events:
        if data is FLUSH:
            if cur:  # written alone, nobody answers it (Postfix's smtpd/cleanup split)
                chunks.append(NoReply(cur))
                cur = b""
            continue
        if skip and protocol & skip:
            continue
        cur += data
        is_event = data[4:5] != b"D"
        if is_event and not (noreply and protocol & noreply):
            chunks.append(cur)
            cur = b""
    assert not cur
    # where to hold a connection open: after the reply that covers RCPT (or MAIL, for a
    # milter that asked not to get RCPT)
    letters = [_event_letters(ch).replace(b"D", b"") for ch in chunks]
    after_rcpt = next((i for i, ev in enumerate(letters) if b"R" in ev),
                      next((i for i, ev in enumerate(letters) if b"M" in ev), -1)) + 1
    return Plan(chunks, after_rcpt)


class Conn:
    __slots__ = ("sock", "tx", "plan", "step", "buf", "out", "t0", "mods", "state", "hold")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buf = b""
        self.out = b""
        self.mods = 0
        self.step = 0
        self.state = "idle"
        self.hold = False


def _connect(address: str) -> socket.socket:
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(address[5:])
        except BlockingIOError:
            pass
        return s
    host, port = address[5:].rsplit(":", 1)  # inet:HOST:PORT
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect((host.strip("[]"), int(port)))
    except BlockingIOError:
        pass
    return s


def run_worker(address: str, conc: int, txs: list[zones.Tx], start_at: float, duration: float,
               hold_after_rcpt: bool = False, hold_file: str | None = None,
               timeout: float = 30.0) -> dict:
    """Run ``conc`` connections from this process until ``txs`` or ``duration`` run out.

    With ``hold_after_rcpt`` each connection stops after its RCPT reply until
    ``hold_file`` exists (used to hold many connections open at once).
    """
    sel = selectors.DefaultSelector()
    lat: list[float] = []
    ok = rejected = errors = mods = 0
    protocol_seen = None
    next_tx = 0
    while time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    t_begin = time.perf_counter()
    deadline = t_begin + duration
    hard_deadline = deadline + timeout
    cpu0 = os.times()
    conns = [Conn() for _ in range(conc)]
    held: list[Conn] = []
    release = False

    def start(c: Conn) -> bool:
        nonlocal next_tx
        if next_tx >= len(txs) or time.perf_counter() >= deadline:
            c.state = "done"
            return False
        c.tx = txs[next_tx]
        next_tx += 1
        c.t0 = time.perf_counter()
        c.sock = _connect(address)
        c.buf, c.mods, c.step, c.state = b"", 0, 0, "optneg"
        c.out = OPTNEG
        sel.register(c.sock, selectors.EVENT_WRITE, c)
        return True

    def finish(c: Conn, outcome: str) -> None:
        nonlocal ok, rejected, errors, mods
        if c.sock is not None:
            if outcome != "error":
                try:
                    c.sock.send(plans_tail)
                except OSError:
                    pass
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
            c.sock = None
        if outcome == "ok":
            ok += 1
            lat.append((time.perf_counter() - c.t0) * 1000.0)
            mods += c.mods
        elif outcome == "rejected":
            rejected += 1
        else:
            errors += 1
        start(c)

    plans_tail = packet(b"A") + packet(b"Q")
    # Holding many connections: open them a few dozen at a time, each next one
    # once an earlier one is held, so the listen backlog never overflows.
    waiting = list(conns[32:]) if hold_after_rcpt else []
    for c in (conns[:32] if hold_after_rcpt else conns):
        start(c)
    ready_written = False
    active = lambda: waiting or any(c.state not in ("done", "idle") for c in conns)
    while active():
        now = time.perf_counter()
        if now > hard_deadline:
            for c in conns:
                if c.sock is not None:
                    finish(c, "error")
                c.state = "done"
            break
        if hold_after_rcpt and held and not release and hold_file and os.path.exists(hold_file):
            release = True
            for c in held:
                c.out = c.plan.chunks[c.step]
                sel.modify(c.sock, selectors.EVENT_WRITE, c)
            held.clear()
        events = sel.select(timeout=0.05)
        for key, mask in events:
            c: Conn = key.data
            if c.sock is None:
                continue
            try:
                if mask & selectors.EVENT_WRITE:
                    n = c.sock.send(c.out)
                    c.out = c.out[n:]
                    while not c.out and c.state == "events" and isinstance(c.plan.chunks[c.step], NoReply):
                        c.step += 1  # no reply to wait for: the next write follows at once
                        n = c.sock.send(c.plan.chunks[c.step])
                        c.out = c.plan.chunks[c.step][n:]
                    if not c.out:
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                data = c.sock.recv(65536)
            except (ConnectionError, OSError):
                finish(c, "error")
                continue
            if not data:
                finish(c, "error")
                continue
            c.buf += data
            # parse complete packets
            while len(c.buf) >= 5:
                (n,) = struct.unpack_from(">I", c.buf)
                if len(c.buf) < 4 + n:
                    break
                cmd = c.buf[4]
                body = c.buf[5:4 + n]
                c.buf = c.buf[4 + n:]
                if c.state == "optneg":
                    if cmd != ord("O"):
                        finish(c, "error")
                        break
                    _, _, proto = struct.unpack_from(">III", body)
                    protocol_seen = proto
                    qid = f"{random.getrandbits(40):010X}"
                    c.plan = build(c.tx, qid, proto)
                    c.state, c.step = "events", 0
                    c.out = c.plan.chunks[0]
                    sel.modify(c.sock, selectors.EVENT_WRITE, c)
                    continue
                if cmd in MODS:
                    c.mods += 1
                    continue
                if cmd == ord("p"):
                    continue
                if cmd not in FINAL:
                    finish(c, "error")
                    break
                if cmd in REFUSALS:
                    finish(c, "rejected")
                    break
                if cmd == ord("a") or c.step == len(c.plan.chunks) - 1:
                    finish(c, "ok")
                    break
                c.step += 1
                if hold_after_rcpt and not release and c.step == c.plan.after_rcpt:
                    held.append(c)
                    if waiting:
                        start(waiting.pop())
                    elif len(held) == conc and hold_file and not ready_written:
                        Path(hold_file + ".ready").write_text(str(len(held)))
                        ready_written = True
                    continue
                c.out = c.plan.chunks[c.step]
                sel.modify(c.sock, selectors.EVENT_WRITE, c)
    cpu1 = os.times()
    t_end = time.perf_counter()
    sel.close()
    return {"ok": ok, "rejected": rejected, "errors": errors, "mods": mods, "latencies_ms": lat,
            "elapsed": t_end - t_begin, "client_cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            "protocol": protocol_seen, "started": next_tx}


def _event_letters(chunk: bytes) -> bytes:
    """The command letters of the packets in a chunk."""
    out, i = b"", 0
    while i + 5 <= len(chunk):
        (n,) = struct.unpack_from(">I", chunk, i)
        out += chunk[i + 4:i + 5]
        i += 4 + n
    return out


def _worker_main(conn, args: dict) -> None:
    try:
        conn.send(run_worker(**args))
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    conn.close()


def run(address: str, conc: int, txs: list[zones.Tx], duration: float, procs: int,
        hold_file: str | None = None, on_start=None) -> dict:
    """Spread ``conc`` connections over ``procs`` processes; merge their results."""
    procs = max(1, min(procs, conc))
    start_at = time.time() + 0.25
    children = []
    for p in range(procs):
        share = conc // procs + (1 if p < conc % procs else 0)
        parent, child = mp.Pipe(duplex=False)
        args = dict(address=address, conc=share, txs=txs[p::procs], start_at=start_at,
                    duration=duration, hold_after_rcpt=hold_file is not None, hold_file=hold_file)
        proc = mp.Process(target=_worker_main, args=(child, args), daemon=True)
        proc.start()
        child.close()
        children.append((proc, parent))
    if on_start:
        on_start(start_at)
    results = []
    for proc, parent in children:
        if parent.poll(duration + 120):
            results.append(parent.recv())
        else:
            results.append({"error": "worker timed out"})
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    bad = [r["error"] for r in results if "error" in r]
    if bad:
        raise RuntimeError("load worker failed: " + "; ".join(bad))
    lat = sorted(x for r in results for x in r["latencies_ms"])
    return {"ok": sum(r["ok"] for r in results), "rejected": sum(r["rejected"] for r in results),
            "errors": sum(r["errors"] for r in results), "mods": sum(r["mods"] for r in results),
            "elapsed": max(r["elapsed"] for r in results), "latencies_ms": lat,
            "client_cpu": sum(r["client_cpu"] for r in results),
            "protocol": next((r["protocol"] for r in results if r["protocol"] is not None), None),
            # per process (process p ran txs[p::procs]): how many of its transactions it began
            "started": [r["started"] for r in results]}


if __name__ == "__main__":  # quick manual check: loadgen.py ADDRESS CONC SECONDS
    addr, conc, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rng = random.Random(1)
    txs = [zones.warm_tx(rng) for _ in range(200000)]
    r = run(addr, conc, txs, secs, procs=1 if conc == 1 else 2)
    lat = r.pop("latencies_ms")
    r["tx_per_s"] = r["ok"] / r["elapsed"]
    if lat:
        r["p50"] = lat[len(lat) // 2]
        r["p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(json.dumps(r))
