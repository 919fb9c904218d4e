"""The Debian package on a Debian booted with systemd as PID 1, with Debian's Postfix as installed.

A debootstrap'd Debian 12 root (tests/kit/bootlab.py; made once by
scripts/install-boot-lab.sh and cached) is booted in its own namespaces.
Inside, a unit of the test (tests/kit/bootlab_inside.py) does what an
administrator does: ``apt-get install ./spfmilter_…deb`` on the running
system, the README's Postfix lines (the packaged ``postfix-main.cf``) with
``postconf -e`` and Postfix's chroot left as Debian installs it, mail over SMTP
from documentation addresses on the namespace's ``lo`` with the tests' DNS
server answering on 127.0.0.1:53, ``spfmilter doctor``, TestOnly, Postfix
without its chroot, reload/restart/stop, an upgrade to a newer version of the
same package that keeps the conffile's edits, and a purge.  It records what it
saw; the tests here judge it.  No network: the root already holds the
package's Depends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from spfmilter import __version__
from tests.kit import DATA, ROOT, dkimkeys, mta
from tests.kit.bootlab import Boot, BootLab, BootLabMissing, base_root

DEB = ROOT / f"spfmilter_{__version__}_all.deb"
UPGRADE_VERSION = f"{__version__}+boottest1"
CLIENTS = ["192.0.2.10", "198.51.100.7"]
BOOT_TIMEOUT = 900
INSIDE = "/opt/spfmilter-test"

DNS_UNIT = f"""\
[Unit]
Description=the tests' DNS server (tests/kit/dnsserver.py) on 127.0.0.1:53
Before=nss-lookup.target postfix.service spfmilter.service
Wants=nss-lookup.target

[Service]
ExecStart=/usr/bin/python3 {INSIDE}/dns.py

[Install]
WantedBy=multi-user.target
"""
CHECK_UNIT = f"""\
[Unit]
Description=spfmilter package checks
After=spfmilter-test-dns.service postfix.service

# the script powers off when it is done; if it cannot even start, systemd does
FailureAction=poweroff

[Service]
Type=exec
ExecStart=/usr/bin/python3 {INSIDE}/bootlab_inside.py {INSIDE}/{DEB.name} {INSIDE}/upgrade.deb
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""
DNS_MAIN = f"""\
import sys, time
import yaml
sys.path.insert(0, "{INSIDE}")
from dnsserver import TestDNSServer
TestDNSServer(yaml.safe_load(open("{INSIDE}/zones.yml")), port=53).start()
print("spfmilter-test-dns: ready", flush=True)
while True:
    time.sleep(3600)
"""


def _need(condition: bool, what: str) -> None:
    """Missing component: fail under CI, skip elsewhere."""
    if condition:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(what)
    pytest.skip(what)


def upgrade_deb(deb: Path, work: Path) -> Path:
    """The same package under a higher version: installing it is a real upgrade."""
    tree = work / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=120)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {UPGRADE_VERSION}", text))
    out = work / "upgrade.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True,
                   capture_output=True, timeout=120)
    shutil.rmtree(tree)
    return out


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Boot]]:
    _need(os.geteuid() == 0, "booting a Debian root needs root")
    _need(shutil.which("unshare") is not None and shutil.which("dpkg-deb") is not None,
          "unshare and dpkg-deb (util-linux, dpkg)")
    res = subprocess.run(["make", "-C", str(ROOT), "deb"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and DEB.exists(), f"make deb failed\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
    try:
        base = base_root()
    except BootLabMissing as exc:
        _need(False, f"{exc}: run `sh scripts/install-boot-lab.sh` as root (downloads Debian packages once)")
        raise
    work = Path(tmp_path_factory.mktemp("bootlab", numbered=True))
    lab = BootLab(base, work / "root")
    try:
        lab.put(f"{INSIDE}/{DEB.name}", DEB.read_bytes())
        lab.put(f"{INSIDE}/upgrade.deb", upgrade_deb(DEB, work).read_bytes())
        lab.put(f"{INSIDE}/bootlab_inside.py", (ROOT / "tests/kit/bootlab_inside.py").read_text())
        lab.put(f"{INSIDE}/dnsserver.py", (ROOT / "tests/kit/dnsserver.py").read_text())
        zones = {**yaml.safe_load((DATA / "zones.yml").read_text()),
                 "bank.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
                 "sel1._domainkey.bank.test": [{"TXT": dkimkeys.key_record()}]}
        lab.put(f"{INSIDE}/zones.yml", yaml.safe_dump(zones))
        lab.put(f"{INSIDE}/signed.eml", dkimkeys.sign(
            mta.make_message("user@bank.test", "alice@mx.test", subject="dkim rescued"), "bank.test"))
        lab.put(f"{INSIDE}/unsigned.eml",
                mta.make_message("user@bank.test", "alice@mx.test", subject="dkim unsigned"))
        lab.put(f"{INSIDE}/dns.py", DNS_MAIN)
        lab.put("/etc/resolv.conf", "nameserver 127.0.0.1\n")
        lab.put("/etc/hostname", "mx\n")
        lab.enable("spfmilter-test-dns.service", DNS_UNIT)
        lab.enable("spfmilter-test-checks.service", CHECK_UNIT)
        subprocess.run(["chroot", str(base), "true"], check=True, timeout=30)  # a usable root
        boot = lab.boot(CLIENTS, BOOT_TIMEOUT)
        results = lab.path("/results/results.json")
        assert results.exists(), f"the checks left no results (unshare exit {boot.returncode})\n" \
                                 + boot.console[-6000:]
        facts = json.loads(results.read_text())
        shutil.copy(results, work / "results.json")  # kept by pytest with its tmp folders
        (work / "console.log").write_text(boot.console)
        print(f"boot: {boot.seconds:.1f}s, steps: "
              + ", ".join(f"{s['name']} {s['seconds']}s" for s in facts.get("steps", [])))
        yield facts, boot
    finally:
        lab.cleanup()


def reply(step: dict[str, Any], key: str) -> tuple[int, str]:
    value = step.get(key)
    assert value is not None, step
    return int(value[0]), str(value[1])


def test_the_root_boots_with_systemd_and_the_checks_finish(booted: tuple[dict[str, Any], Boot]) -> None:
    facts, boot = booted
    assert facts["pid1"] in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd"), facts["pid1"]
    assert facts.get("done"), {k: v for k, v in facts.items() if isinstance(v, dict) and "exception" in v}
    assert boot.returncode is not None, "the root did not power off in time"
    # Debian's Postfix as installed: smtpd chrooted
    assert facts["chroot_before"] == "smtp/inet/chroot = y"
    assert facts["postfix_before"]["ActiveState"] == "active"


def test_apt_install_starts_the_unit_with_the_socket_inside_postfixs_chroot(
        booted: tuple[dict[str, Any], Boot]) -> None:
    install = booted[0]["install"]
    assert install["apt"]["rc"] == 0, install["apt"]["out"]
    assert install["unit"]["ActiveState"] == "active" and install["unit"]["User"] == "spfmilter", install
    assert install["enabled"] == "enabled"
    assert install["run_link"] == {"type": "l", "mode": "0777", "owner": "root:root",
                                   "target": "/var/spool/postfix/run/spfmilter"}
    assert install["spool_run"] == {"type": "d", "mode": "0755", "owner": "root:root"}
    assert install["folder"] == {"type": "d", "mode": "0750", "owner": "spfmilter:spfmilter"}
    assert install["socket"] == {"type": "s", "mode": "0770", "owner": "spfmilter:spfmilter"}
    assert install["socket_via_run"] == install["socket"]
    assert "spfmilter" in install["postfix_groups"]


def test_readme_postfix_lines_on_chrooted_postfix_label_a_pass_and_refuse_a_forgery(
        booted: tuple[dict[str, Any], Boot]) -> None:
    facts = booted[0]
    conf = facts["configure"]
    assert "smtpd_milters = unix:/run/spfmilter/spfmilter.sock" in conf["settings"]
    assert all(r["rc"] == 0 for r in conf["postconf"]), conf["postconf"]
    # the socket folder inside the queue folder is nothing `postfix check` complains about
    assert conf["postfix_check"]["rc"] == 0 and conf["postfix_check"]["out"] == "", conf["postfix_check"]
    assert conf["restart_postfix"]["rc"] == 0 and conf["reload_spfmilter"]["rc"] == 0
    assert conf["chroot"] == "smtp/inet/chroot = y", "the test must not turn the chroot off here"
    mail = facts["mail"]
    code, text = reply(mail["forged"], "rcpt")
    assert (code, text[:6]) == (550, "5.7.23"), mail["forged"]
    assert mail["forged_delivered"] is None
    assert reply(mail["good"], "rcpt")[0] == 250 and reply(mail["good"], "data")[0] == 250, mail["good"]
    msg = mail["delivered"]
    assert msg is not None, "the message was accepted but not delivered"
    headers = msg.split("\n\n", 1)[0]
    assert re.search(r"(?m)^Authentication-Results: mx\.test;.*\bspf=pass smtp\.mailfrom=allowed\.test", headers), \
        headers
    assert re.search(r"(?m)^Received-SPF: pass ", headers), headers


def test_doctor_is_clean_on_the_packaged_setup(booted: tuple[dict[str, Any], Boot]) -> None:
    doctor = booted[0]["doctor"]
    assert doctor["rc"] == 0, doctor["out"]
    assert "problem:" not in doctor["out"] and "warning:" not in doctor["out"], doctor["out"]
    # the chroot check really looked inside the chroot and connected as postfix
    assert re.search(r"ok: smtpd smtp/inet names spfmilter's socket \(unix:/run/spfmilter/spfmilter.sock inside "
                     r"the chroot /var/spool/postfix\), and user postfix connects", doctor["out"]), doctor["out"]


def test_testonly_zero_labels_a_forgery_instead_of_refusing_it(booted: tuple[dict[str, Any], Boot]) -> None:
    t = booted[0]["testonly"]
    assert t["reload"]["rc"] == 0 and t["reload"]["logged"], t["reload"]
    assert reply(t["forged"], "rcpt")[0] == 250 and reply(t["forged"], "data")[0] == 250, t["forged"]
    assert t["delivered"] is not None
    assert re.search(r"(?m)^Received-SPF: fail ", t["delivered"].split("\n\n", 1)[0]), t["delivered"]


def test_dkim_rescue_delivers_a_signed_forward_and_refuses_it_unsigned(
        booted: tuple[dict[str, Any], Boot]) -> None:
    d = booted[0]["dkim_rescue"]
    assert d["reload"]["rc"] == 0 and d["reload"]["logged"], d["reload"]
    assert reply(d["signed"], "rcpt")[0] == 250 and reply(d["signed"], "data")[0] == 250, d["signed"]
    ar = " ".join(re.findall(r"(?m)^Authentication-Results: mx\.test;.*", d["delivered"] or ""))
    assert "dkim=pass header.d=bank.test header.s=sel1" in ar and "spf=fail smtp.mailfrom=bank.test" in ar, \
        d["delivered"]
    assert reply(d["unsigned"], "rcpt")[0] == 250, d["unsigned"]  # held at RCPT
    code, text = reply(d["unsigned"], "data")
    assert (code, text[:6]) == (550, "5.7.23"), d["unsigned"]
    assert d["unsigned_delivered"] is None and d["reload_back"]["rc"] == 0


def test_same_lines_work_with_postfix_chroot_off(booted: tuple[dict[str, Any], Boot]) -> None:
    n = booted[0]["no_chroot"]
    assert n["off"]["rc"] == 0 and n["restart"]["rc"] == 0
    assert reply(n["good"], "data")[0] == 250, n["good"]
    assert n["delivered"] is not None and "spf=pass smtp.mailfrom=allowed.test" in n["delivered"]
    code, text = reply(n["forged"], "rcpt")
    assert (code, text[:6]) == (550, "5.7.23"), n["forged"]
    assert n["doctor"]["rc"] == 0, n["doctor"]["out"]
    assert n["chroot"] == "smtp/inet/chroot = y" and n["restart_back"]["rc"] == 0


def test_reload_restart_stop_and_start_again(booted: tuple[dict[str, Any], Boot]) -> None:
    life = booted[0]["lifecycle"]
    pid = life["before"]["MainPID"]
    assert life["reload"]["rc"] == 0 and life["reload"]["logged"]
    assert life["after_reload"]["MainPID"] == pid and life["after_reload"]["ActiveState"] == "active"
    assert life["restart"]["rc"] == 0
    assert life["after_restart"]["ActiveState"] == "active" and life["after_restart"]["MainPID"] != pid
    assert life["delivered_after_restart"], life["mail_after_restart"]
    assert life["stop"]["rc"] == 0
    stopped = life["after_stop"]
    assert (stopped["ActiveState"], stopped["Result"]) == ("inactive", "success"), stopped
    assert life["socket_after_stop"] is None, "a stale socket left behind"
    # milter_default_action = tempfail: while spfmilter is down mail waits
    code, text = reply(life["mail_while_stopped"], "mail")  # Postfix tempfails from MAIL FROM on
    assert (code, text[:5]) == (451, "4.7.1"), life["mail_while_stopped"]
    # folder and symlink removed behind its back: the unit makes them again
    assert life["start"]["rc"] == 0 and life["after_start"]["ActiveState"] == "active", life
    assert life["run_link_after_start"]["target"] == "/var/spool/postfix/run/spfmilter"
    assert reply(life["mail_after_start"], "data")[0] == 250, life["mail_after_start"]


def test_socket_outside_the_chroot_is_named_by_doctor_and_its_fix_restores_the_layout(
        booted: tuple[dict[str, Any], Boot]) -> None:
    """The issue's failure, reproduced: /run/spfmilter a real folder, Postfix chrooted."""
    s = booted[0]["socket_outside_chroot"]
    assert s["manual"]["rc"] == 0 and s["run_dir"]["type"] == "d", s
    code, text = reply(s["mail"], "mail")
    assert (code, text[:5]) == (451, "4.7.1"), s["mail"]
    assert s["doctor"]["rc"] == 1, s["doctor"]["out"]
    [problem] = [line for line in s["doctor"]["out"].splitlines() if line.startswith("problem:")]
    assert "inside the chroot /var/spool/postfix" in problem and "symlink" in problem, problem
    # the fix keeps Postfix's chroot: it remakes the package's folder and symlink
    assert problem.endswith("run: systemd-tmpfiles --create spfmilter.conf && systemctl restart spfmilter"), problem
    assert s["fix"]["rc"] == 0, s["fix"]
    assert s["doctor_after"]["rc"] == 0, s["doctor_after"]["out"]
    assert reply(s["mail_after"], "data")[0] == 250, s["mail_after"]


def test_postfix_installed_later_joins_group_spfmilter_through_the_trigger(
        booted: tuple[dict[str, Any], Boot]) -> None:
    later = booted[0]["postfix_installed_later"]
    assert later["remove"]["rc"] == 0 and "spfmilter" not in later["groups_before"], later
    assert later["trigger"]["rc"] == 0 and later["process"]["rc"] == 0, later
    assert "Processing triggers for spfmilter" in later["process"]["out"], later["process"]["out"]
    assert "spfmilter" in later["groups_after"], later


def test_upgrade_keeps_the_conffile_edits_and_restarts(booted: tuple[dict[str, Any], Boot]) -> None:
    up = booted[0]["upgrade"]
    assert up["apt"]["rc"] == 0, up["apt"]["out"]
    assert f"Setting up spfmilter ({UPGRADE_VERSION})" in up["apt"]["out"]
    assert "conffile" not in up["apt"]["out"].lower(), up["apt"]["out"]  # no prompt: the edit kept
    assert up["version"] == UPGRADE_VERSION and up["conf_kept"]
    assert up["after"]["ActiveState"] == "active" and up["after"]["MainPID"] != up["before"]["MainPID"]
    assert up["delivered"], up["mail"]
    assert up["doctor"]["rc"] == 0, up["doctor"]["out"]


def test_journal_has_the_decisions_and_no_tracebacks(booted: tuple[dict[str, Any], Boot]) -> None:
    journal = booted[0]["journal"]
    assert "action=reject" in journal and "action=accept" in journal, journal[-3000:]
    assert "Traceback" not in journal, journal


def test_purge_removes_conffile_socket_folder_and_link_and_leaves_postfix(
        booted: tuple[dict[str, Any], Boot]) -> None:
    purge = booted[0]["purge"]
    assert purge["apt"]["rc"] == 0, purge["apt"]["out"]
    assert purge["left"] == dict.fromkeys(purge["left"]), purge["left"]
    assert purge["unit"]["ActiveState"] == "inactive"
    assert purge["postfix"]["ActiveState"] == "active" and purge["spool"] is not None

