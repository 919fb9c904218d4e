"""The rules about spfmilter's socket, DNS and privileges, and how a level is written."""

import json
from dataclasses import asdict

from spfmilter.doctor import host, service
from spfmilter.doctor.findings import NOTE, OK, PROBLEM, WARNING, Finding, Level
from spfmilter.endpoint import Endpoint

EP = Endpoint.parse("unix:/run/spfmilter/spfmilter.sock").connectable()
SPEC = "unix:/run/spfmilter/spfmilter.sock"


def test_levels_are_written_as_the_report_always_wrote_them():
    f = Finding(Level.WARNING, "x", "m")
    assert f.line() == "warning: m"
    assert json.loads(json.dumps(asdict(f)))["level"] == "warning"
    assert [level.value for level in Level] == ["ok", "note", "warning", "problem"]


def test_a_missing_socket_means_spfmilter_is_not_running():
    found, running = service.judge_socket(service.SocketFacts(SPEC, EP), "/etc/s.conf")
    assert running is False
    assert found[0].line() == (f"problem: spfmilter is not running: Socket = {SPEC} in "
                               "/etc/s.conf, but its folder /run/spfmilter does not exist; "
                               "run: systemctl start spfmilter")


def test_a_file_in_the_sockets_place_is_removed():
    facts = service.SocketFacts(SPEC, EP, file_mode="-rw-r--r--", folder_exists=True)
    found, running = service.judge_socket(facts, "/etc/s.conf")
    assert not running and found[0].fix == ("rm /run/spfmilter/spfmilter.sock && "
                                            "systemctl restart spfmilter")


def test_a_socket_that_does_not_negotiate_is_another_program():
    facts = service.SocketFacts(SPEC, EP, "srwxrwx---", True, True, "modes", None,
                                {"connected": True, "error": "bad packet"})
    found, running = service.judge_socket(facts, "/etc/s.conf")
    assert [f.level for f in found] == [OK, PROBLEM] and not running
    assert "does not negotiate the milter protocol (bad packet)" in found[1].message


def test_a_resolver_that_does_not_answer_makes_every_check_temperror():
    d = host.DnsFacts("127.0.0.1:9", 1, 1.04, None, "timeout")
    [f] = host.judge_dns(d, "/etc/s.conf")
    assert f.level == PROBLEM
    assert f.message.startswith("DNS: 127.0.0.1:9 did not answer 'localhost A' within "
                                "Lookup_Time = 1s (timeout, after 1.0s): every SPF check")


def test_root_without_user_id_is_a_problem():
    p = host.PrivilegeFacts(None, None, True, "its socket", -1, {10: 0}, {0: "root"})
    [f] = host.judge_privileges(p, True, "/etc/s.conf")
    assert f.level == PROBLEM and f.fix == "adduser --system --group spfmilter"
    assert f.message.startswith("spfmilter runs as root (pid 10 runs as root): set UserID")


def test_user_id_naming_no_user_and_the_wrong_user():
    p = host.PrivilegeFacts(None, "spf:mail", True, "x", None, {10: 5}, {5: "other"})
    [f] = host.judge_privileges(p, True, "/etc/s.conf")
    assert f.fix == "adduser --system --group spf"
    p = host.PrivilegeFacts(None, "spf", True, "x", 7, {10: 5}, {5: "other"})
    [f] = host.judge_privileges(p, True, "/etc/s.conf")
    assert f.message == ("spfmilter is not running as UserID = spf (pid 10 runs as other); "
                         "restart it")


def test_a_pid_file_naming_no_spfmilter_while_one_answers_is_a_warning():
    p = host.PrivilegeFacts("/run/s.pid", None, False)
    assert host.judge_privileges(p, True, "c")[0].level == WARNING
    assert host.judge_privileges(p, False, "c")[0].level == NOTE
