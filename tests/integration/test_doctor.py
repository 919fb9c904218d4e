"""``spfmilter doctor`` against the suite's real Postfix and Sendmail and a real spfmilter.

Each test breaks one thing (socket, chroot, default action, macros, F=T,
daemon, resolver) and expects doctor to name that one problem and its fix,
exit 1; the configuration from ``init/`` gives exit 0 and only ``ok:`` lines.
doctor runs inside the lab's mount namespace (``lab.in_namespace``), where
the MTA's paths are the ones it uses, and reads the lab's main.cf/master.cf
through ``postconf -c`` or the lab's sendmail.cf.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.kit import ROOT, mta
from tests.kit.daemon import SpfmilterProcess
from tests.kit.dnsserver import TestDNSServer
from tests.kit.net import free_port


def run_doctor(prefix: Sequence[str], *args: str) -> tuple[int, list[str]]:
    proc = subprocess.run([*prefix, sys.executable, "-m", "spfmilter", "doctor", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr + proc.stdout
    assert proc.stderr == "", proc.stderr
    return proc.returncode, proc.stdout.splitlines()


def problems(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("problem:")]


@pytest.fixture
def milter(spfmilter: Callable[..., SpfmilterProcess], tmp_path: Path) -> SpfmilterProcess:
    """A daemon of the test's own, set up as documented: not root, a pid file."""
    return spfmilter(fresh=True, UserID="nobody", UMask="007",
                     PidFile=str(tmp_path / "run" / "spfmilter.pid"))


@pytest.fixture
def postfix(milter: SpfmilterProcess, tmp_path: Path) -> Iterator[mta.PostfixLab]:
    mta.require_or_skip("postfix")
    with mta.PostfixLab(tmp_path / "postfix", milter.socket_spec, None) as lab:
        yield lab


@pytest.fixture
def sendmail(milter: SpfmilterProcess, tmp_path: Path) -> Iterator[mta.SendmailLab]:
    mta.require_or_skip("sendmail")
    with mta.SendmailLab(tmp_path / "sendmail", milter.socket_spec, free_port()) as lab:
        yield lab


def apply_fix(lab: mta.PostfixLab, line: str) -> None:
    """Run the command a finding names, as the administrator would (in the lab's namespace)."""
    command = line.split("; run: ", 1)[1]
    proc = subprocess.run(lab.in_namespace(["sh", "-c", command]), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"


def postfix_doctor(lab: mta.PostfixLab, milter: SpfmilterProcess,
                   *extra: str) -> tuple[int, list[str]]:
    return run_doctor(lab.in_namespace([]), "-c", str(milter.config_path),
                      "-C", lab.ns_config_dir, *extra)


def sendmail_doctor(lab: mta.SendmailLab, milter: SpfmilterProcess) -> tuple[int, list[str]]:
    return run_doctor(lab.in_namespace([]), "-c", str(milter.config_path),
                      "--sendmail-cf", str(lab.cf_file))


# --- the documented configuration is clean ---------------------------------------------

def test_postfix_as_documented_is_all_ok(postfix: mta.PostfixLab,
                                         milter: SpfmilterProcess) -> None:
    rc, lines = postfix_doctor(postfix, milter)
    assert rc == 0, "\n".join(lines)
    assert lines and all(line.startswith("ok: ") for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    assert "user postfix connects and negotiates milter protocol 6" in text
    assert "milter_default_action = tempfail" in text
    assert "runs as nobody, not root" in text
    assert "answered 'localhost A'" in text
    assert "Sendmail" not in text          # -C alone: only Postfix is checked


def test_json_gives_the_same_findings(postfix: mta.PostfixLab, milter: SpfmilterProcess) -> None:
    rc, lines = postfix_doctor(postfix, milter, "--json")
    findings = json.loads("\n".join(lines))
    assert rc == 0
    assert {f["level"] for f in findings} == {"ok"}
    assert {"config", "socket", "milter", "postfix", "dns", "privileges"} <= \
        {f["area"] for f in findings}


def test_sendmail_as_documented_is_all_ok(sendmail: mta.SendmailLab,
                                          milter: SpfmilterProcess) -> None:
    rc, lines = sendmail_doctor(sendmail, milter)
    assert rc == 0, "\n".join(lines)
    assert all(line.startswith("ok: ") for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    assert "F=T" in text and "user root connects and negotiates milter protocol 6" in text
    assert "postfix" not in text.lower()


# --- one mistake at a time -----------------------------------------------------------

def test_socket_unreadable_by_postfix(postfix: mta.PostfixLab, milter: SpfmilterProcess) -> None:
    os.chmod(milter.socket_path, 0o770)   # what UMask = 007 gives, without postfix in its group
    rc, lines = postfix_doctor(postfix, milter)
    assert rc == 1
    [problem] = problems(lines)
    assert "user postfix" in problem and "Permission denied" in problem, problem
    assert "run: usermod -aG nogroup postfix" in problem


def test_chrooted_smtpd_with_the_socket_outside(postfix: mta.PostfixLab,
                                                milter: SpfmilterProcess) -> None:
    service = f"127.0.0.1:{postfix.port}/inet"
    postfix.postconf("-F", f"{service}/chroot=y")
    rc, lines = postfix_doctor(postfix, milter)
    assert rc == 1
    [problem] = problems(lines)
    queue = postfix.ns(postfix.queue_dir)
    assert f"inside the chroot {queue}" in problem, problem
    assert f"run: postconf -c {postfix.ns_config_dir} -F {service}/chroot=n" in problem
    apply_fix(postfix, problem)
    assert postfix_doctor(postfix, milter)[0] == 0


def test_milter_default_action_accept(postfix: mta.PostfixLab, milter: SpfmilterProcess) -> None:
    postfix.postconf("-e", "milter_default_action = accept")
    rc, lines = postfix_doctor(postfix, milter)
    assert rc == 1
    assert problems(lines) == [
        f"problem: milter_default_action = accept in {postfix.ns_config_dir} lets mail through "
        "unchecked while spfmilter is down; run: postconf -c "
        f"{postfix.ns_config_dir} -e milter_default_action=tempfail && postfix -c "
        f"{postfix.ns_config_dir} reload"]
    apply_fix(postfix, problems(lines)[0])
    assert postfix_doctor(postfix, milter)[0] == 0


def test_macros_without_auth_authen(postfix: mta.PostfixLab, milter: SpfmilterProcess) -> None:
    postfix.postconf("-e", "milter_mail_macros = i {mail_addr}")
    rc, lines = postfix_doctor(postfix, milter)
    assert rc == 1
    [problem] = problems(lines)
    assert "milter_mail_macros" in problem and "lacks {auth_authen}" in problem
    assert "-e 'milter_mail_macros=i {mail_addr} {auth_authen}'" in problem
    apply_fix(postfix, problem)
    assert postfix_doctor(postfix, milter)[0] == 0


def test_sendmail_without_f_t(sendmail: mta.SendmailLab, milter: SpfmilterProcess) -> None:
    cf = sendmail.cf_file.read_text()
    assert ", F=T" in cf
    sendmail.cf_file.write_text(cf.replace(", F=T", ""))
    rc, lines = sendmail_doctor(sendmail, milter)
    assert rc == 1
    [problem] = problems(lines)
    assert "F=(none)" in problem and "lets mail through unchecked" in problem, problem
    assert "F=T" in problem


def test_spfmilter_not_running(postfix: mta.PostfixLab, milter: SpfmilterProcess) -> None:
    milter.stop()
    rc, lines = postfix_doctor(postfix, milter)
    assert rc == 1
    [problem] = problems(lines)
    assert "spfmilter is not running" in problem and problem.endswith(
        "run: systemctl start spfmilter"), problem


def test_resolver_not_answering(spfmilter: Callable[..., SpfmilterProcess],
                                tmp_path: Path) -> None:
    mta.require_or_skip("postfix")
    silent = f"127.0.0.1:{free_port()}"   # nothing listens there
    milter = spfmilter(fresh=True, UserID="nobody", UMask="007", Nameservers=silent,
                       PidFile=str(tmp_path / "run" / "spfmilter.pid"))
    with mta.PostfixLab(tmp_path / "postfix", milter.socket_spec, None) as lab:
        rc, lines = postfix_doctor(lab, milter)
    assert rc == 1
    [problem] = problems(lines)
    assert f"DNS: {silent} did not answer 'localhost A' within Lookup_Time = 3s" in problem
    assert "set Nameservers" in problem


def test_invalid_configuration_names_file_line_key(tmp_path: Path) -> None:
    conf = tmp_path / "spfmilter.conf"
    conf.write_text("Socket = unix:/run/x.sock\nLookup_Time = soon\n")
    rc, lines = run_doctor([], "-c", str(conf), "-C", str(tmp_path / "none"))
    assert rc == 1
    assert lines[0].startswith(f"problem: {conf}:2: Lookup_Time: expected a number of seconds")
    assert lines[0].endswith(f"run: spfmilter --check-config -c {conf}")


def test_chrooted_smtpd_with_the_socket_inside_is_ok(dns_server: TestDNSServer,
                                                     tmp_path: Path) -> None:
    """The documented chroot set-up: spfmilter listens inside the queue folder, group postfix."""
    mta.require_or_skip("postfix")
    with mta.PostfixLab(tmp_path / "postfix", None, None) as lab:
        milter = SpfmilterProcess(lab.queue_dir / "spfmilter", {
            "Nameservers": dns_server.nameserver, "Lookup_Time": "3", "UMask": "007",
            "UserID": "nobody:postfix", "PidFile": str(tmp_path / "run" / "spfmilter.pid")})
        try:
            milter.start()
            service = f"127.0.0.1:{lab.port}/inet"
            lab.postconf("-F", f"{service}/chroot=y")
            lab.postconf("-e", "smtpd_milters = unix:/spfmilter/spfmilter.sock")
            rc, lines = postfix_doctor(lab, milter)
        finally:
            milter.stop()
    assert rc == 0, "\n".join(lines)
    assert all(line.startswith("ok: ") for line in lines), "\n".join(lines)
    assert (f"smtpd {service} names spfmilter's socket (unix:/spfmilter/spfmilter.sock "
            f"inside the chroot {lab.ns(lab.queue_dir)}), and user postfix connects") in \
        "\n".join(lines)


def test_non_smtpd_milters_through_spfmilter_is_a_warning(postfix: mta.PostfixLab,
                                                          milter: SpfmilterProcess) -> None:
    postfix.postconf("-e", "non_smtpd_milters = $smtpd_milters")
    rc, lines = postfix_doctor(postfix, milter)
    assert rc == 0, "\n".join(lines)       # a warning is not a problem
    [warning] = [line for line in lines if not line.startswith("ok: ")]
    assert warning.startswith("warning: non_smtpd_milters = unix:/srv/lab/milter/milter.sock")
    assert "sends local mail through spfmilter" in warning
    assert warning.endswith(f"run: postconf -c {postfix.ns_config_dir} -e non_smtpd_milters= "
                            f"&& postfix -c {postfix.ns_config_dir} reload")
    apply_fix(postfix, warning)
    rc, lines = postfix_doctor(postfix, milter)
    assert rc == 0 and all(line.startswith("ok: ") for line in lines), "\n".join(lines)


def test_running_as_root_is_a_problem(spfmilter: Callable[..., SpfmilterProcess],
                                      tmp_path: Path) -> None:
    """No PidFile (the shipped unit sets none): the processes holding the socket are checked."""
    mta.require_or_skip("postfix")
    milter = spfmilter(fresh=True)
    with mta.PostfixLab(tmp_path / "postfix", milter.socket_spec, None) as lab:
        rc, lines = postfix_doctor(lab, milter)
    assert rc == 1
    [problem] = problems(lines)
    assert problem.startswith(f"problem: spfmilter runs as root (pid {milter.proc.pid} runs as "
                              "root, pid "), problem
    assert problem.endswith("set UserID = spfmilter in "
                            f"{milter.config_path} (or User= in its systemd unit), create that "
                            "user and restart spfmilter; run: adduser --system --group spfmilter")


def test_a_master_cf_override_of_the_default_action(postfix: mta.PostfixLab,
                                                    milter: SpfmilterProcess) -> None:
    service = f"127.0.0.1:{postfix.port}/inet"
    postfix.postconf("-P", f"{service}/milter_default_action=accept")
    rc, lines = postfix_doctor(postfix, milter)
    assert rc == 1
    [problem] = problems(lines)
    assert f"overrides milter_default_action = accept for smtpd {service} (-o)" in problem
    assert problem.endswith(f"run: postconf -c {postfix.ns_config_dir} -PX "
                            f"{service}/milter_default_action && postfix -c "
                            f"{postfix.ns_config_dir} reload")
    apply_fix(postfix, problem)   # the fix it names works: doctor is clean again
    assert postfix_doctor(postfix, milter)[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a resolv.conf server listens on port 53")
def test_dns_line_names_the_resolv_conf_and_the_servers_it_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Nameservers, doctor says which file it read and which servers it asked
    (the daemon's start and reload lines name theirs), not just "resolv.conf"."""
    server = TestDNSServer({}, host="127.0.83.3", port=53).start()
    try:
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 127.0.83.3\n")
        monkeypatch.setenv("SPFMILTER_RESOLV_CONF", str(resolv))
        conf = tmp_path / "spfmilter.conf"
        conf.write_text(f"Socket = unix:{tmp_path}/none.sock\nLookup_Time = 3\n")
        _, lines = run_doctor([], "-c", str(conf), "-C", str(tmp_path / "none"))
    finally:
        server.stop()
    [dns] = [line for line in lines if "DNS:" in line]
    assert dns.startswith(f"ok: DNS: the servers of {resolv} (127.0.83.3) answered 'localhost A'"), dns
    assert ("localhost", "A") in [q[:2] for q in server.queries]
