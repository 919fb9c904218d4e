"""``spfmilter report`` speed: lines/s and peak memory of the real command on generated logs.

Two logs, written once per run into a temporary folder:

* a mail log as a Postfix host has it: per message seven Postfix lines and one
  spfmilter decision line (so the cheap skip of other programs' lines counts);
* decision lines only: the worst case, every line parsed and counted.

Decision lines are written by spfmilter.log.kv (the daemon's own quoting), with
many distinct sender domains and clients so that the summary's tables fill and
fold as on a busy host.  ``python -m bench.report_bench`` runs it alone (no
root, no DNS); bench.bench runs it as part of ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spfmilter.log import kv

ROOT = Path(__file__).resolve().parent.parent
TARGET = 300_000     # lines/s on the mail log (issue 23)
POSTFIX_PER_MESSAGE = 7


def _decision(rng: random.Random, i: int, stamp: str) -> str:
    domain = f"d{rng.randrange(50_000)}.example"
    client = f"198.51.{rng.randrange(80)}.{rng.randrange(256)}"
    action, reason, result = rng.choice([("accept", "spf pass", "pass")] * 6 + [
        ("reject", "mailfrom fail", "fail"),
        ("accept", "mailfrom softfail", "softfail"),
        ("accept", "mailfrom fail, TestOnly: would reject", "fail"),
        ("defer", "mailfrom temperror", "temperror")])
    return f"{stamp} mx spfmilter[811]: " + kv(
        action=action, reason=reason, identity="mailfrom", result=result, helo_result="pass",
        client_ip=client, helo=f'mail{i % 97}.{domain} "quoted"' if i % 50 == 0 else
        f"mail.{domain}", envelope_from=f"user{i}@{domain}", rcpt=f"staff{i % 40}@example.org",
        receiver="mx.example.org", queue_id=f"4Q{i:08X}", mta="mx.example.org", daemon="smtpd",
        reply="550 5.7.23" if action == "reject" else None) + "\n"


def _postfix(i: int, stamp: str) -> list[str]:
    q, ip = f"4Q{i:08X}", f"198.51.100.{i % 256}"
    return [f"{stamp} mx postfix/{line}\n" for line in (
        f"smtpd[1234]: connect from unknown[{ip}]",
        f"smtpd[1234]: {q}: client=unknown[{ip}]",
        f"cleanup[2345]: {q}: message-id=<{i}.{q}@sender.example>",
        f"qmgr[99]: {q}: from=<user{i}@sender.example>, size={1000 + i % 9000}, nrcpt=1 (queue "
        "active)",
        f"local[3456]: {q}: to=<staff{i % 40}@example.org>, relay=local, delay=0.1, "
        "delays=0.05/0/0/0.05, dsn=2.0.0, status=sent (delivered to mailbox)",
        f"qmgr[99]: {q}: removed",
        f"smtpd[1234]: disconnect from unknown[{ip}] ehlo=2 mail=1 rcpt=1 data=1 quit=1 "
        "commands=6")]


def write_logs(folder: Path, messages: int, seed: int = 23) -> dict[str, tuple[Path, int]]:
    rng = random.Random(seed)
    mail, only = folder / "mail.log", folder / "decisions.log"
    lines_mail = lines_only = 0
    with open(mail, "w") as fm, open(only, "w") as fo:
        for i in range(messages):
            stamp = f"Dec  5 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
            line = _decision(rng, i, stamp)
            fm.writelines(_postfix(i, stamp)[:2])
            fm.write(line)
            fm.writelines(_postfix(i, stamp)[2:])
            fo.write(line)
            lines_mail += POSTFIX_PER_MESSAGE + 1
            lines_only += 1
    return {"mail log (1 decision line in 8)": (mail, lines_mail),
            "decision lines only": (only, lines_only)}


def measure(path: Path, lines: int) -> dict:
    """The command's own CPU and peak RSS: wait4() gives this one child's usage
    (RUSAGE_CHILDREN's peak would be the largest of every child before it, such as
    replay's workers in the same ``make bench``)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "spfmilter", "report", "--json", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()   # small: one JSON summary, no log
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"spfmilter report: exit {proc.returncode}: {err}")
    decisions = json.loads(out)["summary"]["decisions"]
    cpu = usage.ru_utime + usage.ru_stime
    return {"lines": lines, "bytes": path.stat().st_size, "decisions": decisions,
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "lines_per_s": round(lines / wall), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def run_report(messages: int, log=print) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="spfmilter-report-bench-") as tmp:
        for name, (path, lines) in write_logs(Path(tmp), messages).items():
            row = {"log": name, **measure(path, lines)}
            log(f"report: {name}: {row}")
            rows.append(row)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    mail = next((r for r in rows if r["log"].startswith("mail log")), None)
    if mail is None:
        return []
    only = next((r for r in rows if r["log"] == "decision lines only"), {})
    return [{"target": f"spfmilter report: >= {TARGET:,} lines/s on a mail log",
             "measured": f"{mail['lines_per_s']:,} lines/s ({mail['lines']:,} lines, "
                         f"{mail['bytes'] / 1e6:.0f} MB, peak RSS {mail['peak_rss_mb']} MB); "
                         f"decision lines only: {only.get('lines_per_s', 0):,} lines/s",
             "met": mail["lines_per_s"] >= TARGET}]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=250_000,
                   help="messages in the generated logs (the mail log has 8 lines each)")
    args = p.parse_args()
    rows = run_report(args.messages)
    for t in targets(rows):
        print(f"{'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
