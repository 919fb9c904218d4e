"""Workers: several libmilter processes on the supervisor's one socket.

Every test runs the real daemon with ``Workers`` = 2 or 4 and speaks the
milter protocol to it (the last one through a real Postfix).  Which worker
answered a connection is read from the decision log line's prefix
(``spfmilter[PID]``) and matched to the connection by a sender of its own.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import signal
import tempfile
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.kit.daemon import SpfmilterProcess
from tests.kit.milterclient import MilterSession
from tests.kit.net import free_port, scrape_metrics
from tests.kit.wait import wait_for

pytestmark = pytest.mark.e2e

AUTH_IP = "192.0.2.10"       # allowed.test's SPF record passes it


def _settings(dns_server, workers: int, **more: str) -> dict[str, str]:
    return {"Nameservers": dns_server.nameserver, "skip_addresses": "",
            "Authserv_Id": "mx.test", "Lookup_Time": "3", "Workers": str(workers), **more}


def _start(tmp_path: Path, dns_server, workers: int, workdir: Path | None = None,
           **more: str) -> SpfmilterProcess:
    milter = SpfmilterProcess(workdir or tmp_path / f"milter-{uuid.uuid4().hex[:6]}",
                              _settings(dns_server, workers, **more)).start()
    try:
        wait_for(lambda: milter.log_text().count("action=start") >= workers, 20, "every worker")
        wait_for(lambda: len(milter.worker_pids()) == workers, 10, "the worker processes")
    except BaseException:
        milter.stop()   # a daemon that did not come up right must not outlive the test
        raise
    return milter


def _one(milter: SpfmilterProcess, tag: str, hold: threading.Event | None = None) -> str:
    """One connection, one message from ``tag@allowed.test``; the verdict it got."""
    with MilterSession(milter.socket_path) as s:
        s.connect(AUTH_IP)
        s.helo("helo.test")
        replies, eom = s.transaction(f"{tag}@allowed.test", ["rcpt@mx.test"])
        if hold is not None:
            hold.wait(30)
    if eom is None or eom.final.kind != "accept":
        return f"refused {replies}"
    spf = [v for _, k, v in eom.inserted if k == "Received-SPF"]
    return "accepted" if spf and spf[0].startswith("pass ") else f"no header {eom.inserted}"


def _served_by(milter: SpfmilterProcess, tags: list[str]) -> dict[str, int]:
    """tag -> pid of the worker whose decision line names that sender."""
    wanted = set(tags)
    out = {}
    for m in re.finditer(r"spfmilter\[(\d+)\]: action=accept .*envelope_from=([\w-]+)@",
                         milter.log_text()):
        if m.group(2) in wanted:
            out[m.group(2)] = int(m.group(1))
    return out


def _load(milter: SpfmilterProcess, count: int, label: str, threads: int = 8) -> list[str]:
    tags = [f"{label}-{n:03d}" for n in range(count)]
    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(lambda t: _one(milter, t), tags))
    assert outcomes == ["accepted"] * count, [o for o in outcomes if o != "accepted"][:3]
    return tags


def _scrape(port: int) -> dict[str, float]:
    return scrape_metrics(port, timeout=2)


@pytest.mark.parametrize("workers", [2, 4])
def test_connections_spread_over_every_worker(tmp_path, dns_server, workers):
    milter = _start(tmp_path, dns_server, workers)
    try:
        pids = set(milter.worker_pids())
        tags = _load(milter, 50 if workers == 2 else 80, "spread")
        served = wait_for(lambda: (lambda s: s if len(s) == len(tags) else None)(
            _served_by(milter, tags)), 10, "a decision line per connection")
        per_pid = Counter(served.values())
        assert set(per_pid) == pids, (per_pid, pids)   # every worker served, nobody else did
        assert min(per_pid.values()) >= 2, per_pid
    finally:
        assert milter.stop() == 0


def test_workers_auto_is_one_per_cpu_we_may_run_on(tmp_path, dns_server):
    cpus = len(os.sched_getaffinity(0))   # the daemon inherits the test's CPU affinity
    milter = _start(tmp_path, dns_server, cpus, Workers="auto")
    try:
        assert len(milter.worker_pids()) == cpus
        assert f"workers={cpus}" in milter.log_text()
    finally:
        assert milter.stop() == 0


def test_worker_crash_keeps_the_socket_and_refuses_nobody(tmp_path, dns_server):
    milter = _start(tmp_path, dns_server, 2)
    try:
        inode = os.stat(milter.socket_path).st_ino
        victim, survivor = milter.worker_pids()
        outcomes: list[str] = []
        stop = threading.Event()
        counter = itertools.count()

        def load() -> None:
            while not stop.is_set():
                tag = f"crash-{next(counter):04d}"
                try:
                    outcomes.append(_one(milter, tag))
                except Exception as exc:  # cut, refused or reset: counted below
                    outcomes.append(f"{tag} {exc!r}")

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(outcomes) >= 40, 30, "load before the crash")
        os.kill(victim, signal.SIGKILL)
        milter.wait_for_log(r"action=restart reason=\"?worker killed", 10)
        wait_for(lambda: len(milter.worker_pids()) == 2 and victim not in milter.worker_pids(),
                 10, "a replacement worker")
        replacement = (set(milter.worker_pids()) - {survivor}).pop()
        at_restart = len(outcomes)
        wait_for(lambda: len(outcomes) >= at_restart + 60, 30, "load after the crash")
        stop.set()
        for t in threads:
            t.join(30)
        assert os.stat(milter.socket_path).st_ino == inode   # never closed, never recreated
        # A connection in flight on the killed worker may be cut; none may be refused,
        # and every other one got its verdict.
        failed = [o for o in outcomes if o != "accepted"]
        assert not [o for o in failed if "ConnectionRefused" in o or "FileNotFound" in o], failed
        assert len(failed) <= 4, failed     # at most one per client thread, the one in flight
        served = _served_by(milter, [f"crash-{n:04d}" for n in range(len(outcomes))])
        assert replacement in set(served.values()), "the replacement never served"
    finally:
        milter.stop()


def test_sighup_under_load_reloads_every_worker(tmp_path, dns_server):
    milter = _start(tmp_path, dns_server, 4)
    try:
        pids = set(milter.worker_pids())
        outcomes: list[str] = []
        stop = threading.Event()
        counter = itertools.count()

        def load() -> None:
            while not stop.is_set():
                tag = f"hup-{next(counter):04d}"
                try:
                    outcomes.append(_one(milter, tag))
                except Exception as exc:  # must not happen: fails the assertion below
                    outcomes.append(f"{tag} {exc!r}")

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(outcomes) >= 20, 30, "load before the reload")
        text = milter.config_path.read_text().replace("Authserv_Id = mx.test",
                                                      "Authserv_Id = reloaded.test")
        milter.config_path.write_text(text)
        os.kill(milter.proc.pid, signal.SIGHUP)
        reloaded = wait_for(lambda: (lambda found: found if found >= pids else None)(
            {int(p) for p in re.findall(r"spfmilter\[(\d+)\]: action=reload result=ok",
                                        milter.log_text())}), 15, "a reload line per worker")
        at_reload = len(outcomes)
        wait_for(lambda: len(outcomes) >= at_reload + 40, 30, "load after the reload")
        stop.set()
        for t in threads:
            t.join(30)
        assert reloaded == pids
        assert milter.log_text().count("action=reload result=ok") == len(pids)  # once each
        assert outcomes == ["accepted"] * len(outcomes), [o for o in outcomes if o != "accepted"]
        assert set(milter.worker_pids()) == pids    # a reload restarts nothing
        # every worker now decides with the new settings
        tags = _load(milter, 40, "after-hup")
        lines = [ln for ln in milter.log_text().splitlines() if "envelope_from=after-hup" in ln]
        assert len(lines) == 40 and all("receiver=reloaded.test" in ln for ln in lines)
        assert {int(p) for p in re.findall(r"spfmilter\[(\d+)\]", "\n".join(lines))} == pids
        assert tags
    finally:
        milter.stop()


def test_reload_changes_the_number_of_workers(tmp_path, dns_server):
    milter = _start(tmp_path, dns_server, 2)
    try:
        inode = os.stat(milter.socket_path).st_ino
        first = set(milter.worker_pids())
        for n in (3, 1):
            text = re.sub(r"Workers = \d+", f"Workers = {n}", milter.config_path.read_text())
            milter.config_path.write_text(text)
            os.kill(milter.proc.pid, signal.SIGHUP)
            wait_for(lambda n=n: len(milter.worker_pids()) == n, 20, f"{n} workers")
            _load(milter, 10, f"resize{n}", threads=2)
        assert os.stat(milter.socket_path).st_ino == inode
        assert len(first & set(milter.worker_pids())) == 1   # one of the first two kept serving
        assert "Traceback" not in milter.log_text()
    finally:
        milter.stop()


def test_sigterm_stops_every_worker_and_removes_the_socket_once(tmp_path, dns_server):
    port = free_port()
    milter = _start(tmp_path, dns_server, 4, Metrics=f"127.0.0.1:{port}")
    pids = milter.worker_pids()
    stats = milter.metrics_pid()
    assert len(pids) == 4 and stats is not None
    folder = next(Path("/tmp").glob(f"spfmilter-metrics-*/counter_{milter.proc.pid}.db")).parent
    hold = threading.Event()
    held = threading.Thread(target=lambda: _one(milter, "held-000", hold))
    held.start()   # a connection in flight: the stop waits for it
    wait_for(lambda: "envelope_from=held-000" in milter.log_text(), 10, "the held connection")
    os.kill(milter.proc.pid, signal.SIGTERM)
    wait_for(lambda: milter.log_text().count("action=stop in_flight=0") >= 3, 15,
             "the idle workers to stop")
    assert milter.proc.poll() is None            # still waiting for the one in flight
    hold.set()
    held.join(30)
    assert milter.proc.wait(30) == 0
    stops = re.findall(r"spfmilter\[(\d+)\]: action=stop in_flight=0 pid=(\d+)", milter.log_text())
    assert sorted(int(p) for p, _ in stops) == sorted(pids)
    assert not any(Path(f"/proc/{p}").exists() for p in [*pids, stats])
    assert not os.path.exists(milter.socket_path)
    assert not folder.exists()                   # the metrics files went with the daemon
    assert "Traceback" not in milter.log_text()


def test_one_scrape_sums_every_worker_and_survives_a_crash(tmp_path, dns_server):
    port = free_port()
    milter = _start(tmp_path, dns_server, 2, Metrics=f"127.0.0.1:{port}")
    try:
        tags = _load(milter, 40, "scrape")
        served = wait_for(lambda: (lambda s: s if len(s) == 40 else None)(
            _served_by(milter, tags)), 10, "every decision line")
        per_pid = Counter(served.values())
        assert len(per_pid) == 2, per_pid            # the sum below is over two processes
        m = _scrape(port)
        assert m["spfmilter_workers"] == 2
        assert m["spfmilter_transactions_total"] == 40
        assert m['spfmilter_actions_total{action="accept"}'] == 40
        assert m["spfmilter_connections_in_flight"] == 0
        # each worker looked allowed.test up itself (a cache per worker), at least once
        assert m["spfmilter_dns_queries_total"] >= 2
        assert m["spfmilter_dns_lookups_total"] == (m["spfmilter_dns_queries_total"]
                                                    + m["spfmilter_dns_cache_hits_total"])
        before = m["spfmilter_dns_lookups_total"]
        # a connection held open shows up live
        hold = threading.Event()
        held = threading.Thread(target=lambda: _one(milter, "scrape-held", hold))
        held.start()
        wait_for(lambda: _scrape(port)["spfmilter_connections_in_flight"] == 1, 10,
                 "the open connection in the gauge")
        hold.set()
        held.join(30)
        wait_for(lambda: _scrape(port)["spfmilter_connections_in_flight"] == 0, 10,
                 "the gauge back to 0")
        # a killed worker's counts stay in the totals; its live gauge goes with it
        victim = max(per_pid, key=lambda p: per_pid[p])
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(milter.worker_pids()) == 2 and victim not in milter.worker_pids(),
                 10, "a replacement worker")
        m = wait_for(lambda: (lambda m: m if m["spfmilter_workers"] == 2 else None)(_scrape(port)),
                     10, "the replacement in spfmilter_workers")  # it counts itself once it runs
        assert m["spfmilter_transactions_total"] == 41
        assert m["spfmilter_dns_lookups_total"] > before
        _load(milter, 10, "scrape-after")
        assert _scrape(port)["spfmilter_transactions_total"] == 51
        # the metrics process is replaced too if it dies
        stats = milter.metrics_pid()
        assert stats is not None
        os.kill(stats, signal.SIGKILL)
        wait_for(lambda: milter.metrics_pid() not in (None, stats), 15, "a new metrics process")
        assert wait_for(lambda: _try_scrape(port), 10, "scrapes again")[
            "spfmilter_transactions_total"] == 51
    finally:
        milter.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to test the privilege drop (CI runs as root)")
def test_root_start_with_workers_and_metrics_drops_to_userid(dns_server):
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="spfmilter-priv-") as top:
        os.chmod(top, 0o755)   # the dropped processes must reach their pid file and socket
        pidfile = Path(top) / "run" / "spfmilter.pid"
        sockets = Path(top) / "milter"   # the socket's folder, as /run/spfmilter: UserID's
        sockets.mkdir()
        os.chown(sockets, nobody.pw_uid, nobody.pw_gid)
        milter = _start(Path(top), dns_server, 2, workdir=sockets, UserID="nobody",
                        PidFile=str(pidfile), Metrics=f"127.0.0.1:{port}")
        try:
            assert int(pidfile.read_text()) == milter.proc.pid     # the supervisor
            for pid in [milter.proc.pid, *milter.worker_pids(), milter.metrics_pid()]:
                status = Path(f"/proc/{pid}/status").read_text()
                uid = next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1:]
                assert {int(u) for u in uid} == {nobody.pw_uid}, (pid, uid)
            folder = next(Path("/tmp").glob(f"spfmilter-metrics-*/counter_{milter.proc.pid}.db")).parent
            assert folder.stat().st_uid == nobody.pw_uid
            _load(milter, 20, "priv")
            m = wait_for(lambda: _try_scrape(port), 10, "a scrape")
            assert m["spfmilter_workers"] == 2 and m["spfmilter_transactions_total"] == 20
            victim = milter.worker_pids()[0]    # the supervisor cleans up after it, as nobody
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(milter.worker_pids()) == 2 and victim not in milter.worker_pids(),
                     10, "a replacement worker")
            # the replacement counts itself once it runs (its process exists a moment earlier)
            wait_for(lambda: _scrape(port)["spfmilter_workers"] == 2, 10,
                     "the replacement in spfmilter_workers")
        finally:
            assert milter.stop() == 0
        assert not pidfile.exists() and not os.path.exists(milter.socket_path)
        assert not folder.exists()
        log = milter.log_text()
        assert "Traceback" not in log and "metrics process exited" not in log, log[-2000:]


def _try_scrape(port: int) -> dict[str, float] | None:
    try:
        return _scrape(port)
    except OSError:
        return None


# --- one worker SIGKILLed under load through a real Postfix -------------------------

def _sockets(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return n


MESSAGES = 1000
KILL_AFTER = 300


@pytest.mark.slow
@pytest.mark.mta
def test_sigkill_of_one_worker_under_postfix_load_loses_nothing(tmp_path, dns_server):
    from tests.kit import mta

    mta.require_or_skip("postfix")
    milter = _start(tmp_path, dns_server, 2, Lookup_Time="5")
    inode = os.stat(milter.socket_path).st_ino
    idle = {p: _sockets(p) for p in milter.worker_pids()}
    try:
        with mta.CaptureSMTP() as capture, \
                mta.PostfixLab(tmp_path / "postfix", milter.socket_spec, capture.port,
                               extra_settings={"default_process_limit": "20"}) as postfix, \
                mta.PacedLoad(postfix, MESSAGES, prefix="wkill", client_ip=AUTH_IP,
                              helo="helo.test", sender="user@allowed.test",
                              rcpt="rcpt@example.com") as load:
            load.wait_finished(KILL_AFTER, 120)
            # kill a worker while it holds an MTA connection (more sockets than at rest)
            victim = wait_for(lambda: next((p for p in milter.worker_pids()
                                            if _sockets(p) > idle[p]), None), 20,
                              "a worker with a session in flight")
            os.kill(victim, signal.SIGKILL)
            killed_at = len(load.outcomes)
            load.join(300)

            delivered, refused, lost = (load.fates(f) for f in ("delivered", "refused", "lost"))
            print(f"\none worker killed under load: {MESSAGES} sent, {len(delivered)} delivered "
                  f"with headers, {len(refused)} refused/deferred, {len(lost)} lost; "
                  f"killed after {killed_at}")
            assert len(load.outcomes) == MESSAGES
            assert not lost, [load.replies[i] for i in lost[:3]]
            assert killed_at < MESSAGES - 100          # the kill came in the middle of the load
            # the kill hit a worker under load: the supervisor replaced it (whether a session
            # was cut depends on where that worker was in its sessions; none may be lost)
            milter.wait_for_log(r"action=restart reason=\"worker killed by a signal\" signal=9")
            assert victim not in milter.worker_pids()
            assert all(400 <= c < 500 for c in load.refusal_codes), load.refusal_codes
            # the other worker and the replacement served the rest: most of it went through
            assert len(delivered) > MESSAGES * 0.9, (len(delivered), load.replies.get(refused[-1])
                                                     if refused else None)
            mta.assert_delivered_once_with_our_headers(capture, delivered, "mx.test", "allowed.test")
            assert postfix.queue_files() == []
            assert os.stat(milter.socket_path).st_ino == inode
            log = milter.log_text()
            assert log.count("action=restart") == 1 and log.count("action=start") == 3
            assert "Traceback" not in log
    finally:
        milter.stop()
