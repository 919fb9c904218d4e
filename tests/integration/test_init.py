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
                   "ExecReload=/bin/sh -c 'kill -HUP \"$$MAINPID\"'", "Restart=on-failure", "User=spfmilter"):
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


def test_readme_pip_commands_install_what_the_unit_runs():
    """The "With pip" commands of README.rst and init/spfmilter.service agree: the unit
    runs the program and reads the file that those commands put in place."""
    import re
    import shlex

    readme = (ROOT / "README.rst").read_text()
    section = readme[readme.index("*With pip*"):readme.index("``make dist`` builds")]
    block = section.split("::\n", 1)[1].split("\n\n")[0]
    commands = [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]
    unit = (ROOT / "init" / "spfmilter.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(\S+) -c (\S+) ", unit, re.M)
    [pre] = re.findall(r"^ExecStartPre=(\S+) --check-config -c (\S+)$", unit, re.M)
    program, conf = exec_start
    assert pre == exec_start
    venv = next(c[3] for c in commands if c[:3] == ["python3", "-m", "venv"])
    assert any(c[0] == f"{venv}/bin/pip" and c[1] == "install" for c in commands)
    # the program the unit runs is the venv's (a link to it)
    assert ["ln", "-sf", f"{venv}/bin/spfmilter", program] in commands
    # every file is installed where the unit expects it, folders made as needed
    assert ["install", "-D", "-m", "644", "spfmilter.conf", conf] in commands
    assert ["install", "-m", "644", "init/spfmilter.service", "/etc/systemd/system/"] in commands
    for c in commands:
        if c[0] == "install" and "-D" not in c:  # only into folders every Debian has
            assert Path(c[-1]).is_dir(), c
        if c[0] == "install":
            assert (ROOT / c[-2]).is_file(), c  # the sources are this checkout's
    # the user the unit runs as is the one the commands create
    user = re.search(r"^User=(\S+)$", unit, re.M).group(1)
    assert any(c[0] == "adduser" and "--system" in c and c[-1] == user for c in commands)
    assert any(c[0] == "spfmilter" and "--check-config" in c for c in commands)
    assert "pypi.org" not in unit and "Documentation=man:spfmilter(8)" in unit
