"""Service files: the systemd unit passes `systemd-analyze verify`; the SysV script works."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kit import ROOT
from tests.kit.milterclient import MilterSession
from tests.kit.wait import wait_for

pytestmark = pytest.mark.e2e


def test_systemd_unit_verifies(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze missing: apt-get install systemd")
    unit = tmp_path / "spfmilter.service"
    # verify checks that ExecStart exists: point it at this checkout's console script
    exe = Path(sys.executable).with_name("spfmilter")
    text = (ROOT / "init" / "spfmilter.service").read_text().replace("/usr/local/bin/spfmilter", str(exe))
    unit.write_text(text)
    res = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    # verify reports problems (unknown options, bad values) as lines naming the unit
    complaints = [x for x in (res.stdout + res.stderr).splitlines() if "spfmilter.service" in x]
    assert res.returncode == 0, res.stdout + res.stderr
    assert not complaints, complaints
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                   "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                   "SystemCallFilter=@system-service", "RuntimeDirectory=spfmilter",
                   "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "User=spfmilter"):
        assert option in text


def test_sysv_init_script_start_status_reload_stop(tmp_path, dns_server):
    exe = Path(sys.executable).with_name("spfmilter")
    conf = tmp_path / "spfmilter.conf"
    sock = tmp_path / "init.sock"
    conf.write_text(f"Socket = unix:{sock}\nNameservers = {dns_server.nameserver}\n"
                    "skip_addresses =\nAuthserv_Id = mx.test\n")
    log = tmp_path / "spfmilter.log"
    env = {**os.environ, "SPFMILTER_DAEMON": str(exe), "SPFMILTER_CONF": str(conf),
           "SPFMILTER_PIDFILE": str(tmp_path / "run" / "init.pid"), "SPFMILTER_LOGFILE": str(log)}
    script = str(ROOT / "init" / "spfmilter.init")

    def init(*args):
        return subprocess.run(["sh", script, *args], env=env, capture_output=True, text=True, timeout=90)

    assert init("status").returncode == 3
    try:
        assert init("start").returncode == 0
        wait_for(lambda: log.exists() and "action=start" in log.read_text(), 20, "start")
        assert init("status").returncode == 0
        with MilterSession(str(sock)) as s:
            s.connect("198.51.100.7")
            s.helo("unknown.test")
            assert s.transaction("user@allowed.test", ["a@mx.test"])[0][0].code == "550"
        conf.write_text(conf.read_text() + "Mail_From_reject = False\n")
        assert init("reload").returncode == 0
        wait_for(lambda: "action=reload result=ok" in log.read_text(), 20, "reload")
        with MilterSession(str(sock)) as s:
            s.connect("198.51.100.7")
            s.helo("unknown.test")
            assert s.transaction("user@allowed.test", ["a@mx.test"])[0][0].kind == "continue"
        conf.write_text(conf.read_text() + "Bogus = 1\n")
        bad = init("reload")
        assert bad.returncode == 6 and "Bogus" in bad.stderr
        conf.write_text(conf.read_text().replace("Bogus = 1\n", ""))
        assert init("restart").returncode == 0
        wait_for(lambda: log.read_text().count("action=start") == 2, 30, "restart")
    finally:
        stop = init("stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert init("status").returncode == 3
    assert "action=stop" in log.read_text()
