"""Postfix's rules over hand-built PostfixFacts: no postconf, no MTA.

The same rules against a real Postfix are in tests/integration/test_doctor.py.
"""

import functools

import pytest

from spfmilter.doctor import postfix, reach
from spfmilter.doctor.findings import OK, PROBLEM, WARNING, Level
from spfmilter.doctor.postfix import Milter, PostfixFacts, Smtpd
from spfmilter.endpoint import Endpoint
from tests.unit.doctor.kit import ours

GOOD = {"mail_owner": "postfix", "queue_directory": "/var/spool/postfix",
        "smtpd_milters": "unix:/run/spfmilter/spfmilter.sock", "non_smtpd_milters": "",
        "milter_default_action": "tempfail", "milter_mail_macros": "i {auth_authen}",
        "milter_protocol": "6", "milter_connect_timeout": "30s",
        "milter_command_timeout": "60s", "milter_content_timeout": "300s"}
SMTP = Smtpd("smtp/inet", False, {})


def facts(config_dir=None, smtpds=(SMTP,), non_smtpd=(), tmpfiles=(), **values):
    return PostfixFacts(config_dir, {**GOOD, **values}, tuple(smtpds), tuple(non_smtpd),
                        tuple(tmpfiles))


def levels(findings):
    return [f.level for f in findings]


def test_the_documented_set_up_gives_only_ok_lines():
    assert set(levels(postfix.judge_main_cf(facts(), ours()))) == {OK}


def test_default_action_accept_lets_mail_through_unchecked_and_names_the_command():
    [f] = postfix.judge_default_action(facts(milter_default_action="accept"))
    assert f.level is Level.PROBLEM
    assert f.line() == ("problem: milter_default_action = accept lets mail through unchecked "
                        "while spfmilter is down; run: postconf -e "
                        "milter_default_action=tempfail && postfix reload")


def test_default_action_reject_refuses_mail_in_the_named_instance():
    [f] = postfix.judge_default_action(facts("/etc/postfix-out",
                                             milter_default_action="reject"))
    assert f.message == ("milter_default_action = reject in /etc/postfix-out refuses mail while "
                         "spfmilter is down")
    assert f.fix == ("postconf -c /etc/postfix-out -e milter_default_action=tempfail && "
                     "postfix -c /etc/postfix-out reload")


def test_a_master_cf_override_of_the_default_action_is_a_problem():
    smtpd = Smtpd("submission/inet", False, {"milter_default_action": "accept"})
    [f] = postfix.judge_smtpd_override(facts(), smtpd)
    assert f.level == PROBLEM
    assert "overrides milter_default_action = accept for smtpd submission/inet" in f.message
    assert f.fix == "postconf -PX submission/inet/milter_default_action && postfix reload"
    assert postfix.judge_smtpd_override(facts(), SMTP) == []


def test_chrooted_smtpd_with_the_socket_outside_the_spool_cannot_find_it():
    smtpd = Smtpd("smtp/inet", True, {})
    pf, me = facts(smtpds=[smtpd]), ours()
    target = postfix.smtpd_target(pf, me, smtpd)
    assert isinstance(target, Endpoint)
    f = reach.judge_name(me, "postfix", "smtpd smtp/inet", target, pf.queue, None,
                         functools.partial(postfix.name_fix, pf, me, smtpd))
    assert f is not None and f.level == PROBLEM
    assert f.message.startswith(
        "smtpd smtp/inet looks for the milter at unix:/run/spfmilter/spfmilter.sock inside the "
        "chroot /var/spool/postfix, which is not spfmilter's Socket = "
        "unix:/run/spfmilter/spfmilter.sock; it runs chrooted in /var/spool/postfix")
    assert "let the socket's folder be /var/spool/postfix/run/spfmilter" in f.message
    assert f.fix == "postconf -F smtp/inet/chroot=n && postfix reload"


def test_chrooted_smtpd_with_the_packages_tmpfiles_link_is_fixed_by_recreating_it():
    smtpd = Smtpd("smtp/inet", True, {})
    link = ("/run/spfmilter", "/var/spool/postfix/run/spfmilter")
    _, fix = postfix.name_fix(facts(smtpds=[smtpd], tmpfiles=[link]), ours(), smtpd)
    assert fix == "systemd-tmpfiles --create spfmilter.conf && systemctl restart spfmilter"
    elsewhere = ("/run/spfmilter", "/srv/spfmilter")
    _, fix = postfix.name_fix(facts(smtpds=[smtpd], tmpfiles=[elsewhere]), ours(), smtpd)
    assert fix == "postconf -F smtp/inet/chroot=n && postfix reload"


def test_an_smtpd_without_our_milter_gets_the_entry_it_needs_chroot_relative():
    smtpd = Smtpd("smtp/inet", True, {"smtpd_milters": ""})
    me = ours("unix:/var/spool/postfix/spfmilter/spfmilter.sock")
    f = postfix.smtpd_target(facts(smtpds=[smtpd], smtpd_milters=""), me, smtpd)
    assert not isinstance(f, Endpoint) and f.level == PROBLEM
    assert f.message == ("smtpd_milters (smtpd smtp/inet) = (empty) does not name spfmilter: "
                         "mail is not checked")
    assert f.fix == "postconf -e smtpd_milters=unix:/spfmilter/spfmilter.sock && postfix reload"


def test_missing_macros_are_added_to_the_list():
    [f] = postfix.judge_mail_macros(facts(milter_mail_macros="{mail_addr}"))
    assert f.level == PROBLEM
    assert f.message.startswith("milter_mail_macros lacks i and {auth_authen} ({auth_authen}: ")
    assert f.fix == ("postconf -e 'milter_mail_macros={mail_addr} i {auth_authen}' && "
                     "postfix reload")


def test_non_smtpd_milters_naming_spfmilter_is_a_warning():
    me = ours()
    mine = Milter(me.endpoint, None)
    [f] = postfix.judge_non_smtpd(facts(non_smtpd=[mine], non_smtpd_milters=str(me.endpoint)),
                                  me)
    assert f.level == WARNING and f.fix == "postconf -e non_smtpd_milters= && postfix reload"
    other = Milter(Endpoint("inet", host="127.0.0.1", port=8891), None)
    [f] = postfix.judge_non_smtpd(facts(non_smtpd=[other], non_smtpd_milters="inet:x:8891"), me)
    assert f.level == OK


def test_an_old_milter_protocol_is_a_problem():
    [f] = postfix.judge_protocol(facts(milter_protocol="2"))
    assert f.level == PROBLEM and f.fix == "postconf -e milter_protocol=6 && postfix reload"


@pytest.mark.parametrize("lookup,value,wanted", [(20, "10s", "60s"), (70, "1m", "150s")])
def test_a_timeout_not_longer_than_lookup_time_gets_a_longer_one(lookup, value, wanted):
    found = postfix.judge_timeouts(facts(milter_command_timeout=value), ours(lookup=lookup))
    [f] = [f for f in found if "milter_command_timeout" in f.message]
    assert f.level == PROBLEM
    assert f.message.startswith(f"milter_command_timeout = {value} is not longer than "
                                f"spfmilter's Lookup_Time = {lookup:g}s")
    assert f.fix == f"postconf -e milter_command_timeout={wanted} && postfix reload"


def test_master_cf_services_and_their_overrides_are_read():
    text = ("smtp      inet  n       -       y       -       -       smtpd\n"
            "submission inet n       -       n       -       -       smtpd -o "
            "smtpd_milters=inet:127.0.0.1:1 -o milter_default_action=accept\n"
            "pickup    unix  n       -       y       60      1       pickup\n")
    assert postfix.parse_smtpds(text) == (
        Smtpd("smtp/inet", True, {}),
        Smtpd("submission/inet", False, {"smtpd_milters": "inet:127.0.0.1:1",
                                         "milter_default_action": "accept"}))
    assert postfix.judge_no_smtpd(facts(smtpds=[]))[0].level == WARNING


def test_no_postfix_is_ok_but_a_named_folder_without_main_cf_is_a_problem():
    assert postfix.judge_install(None, None, False, False).level == OK
    assert postfix.judge_install("/srv/pf", "/usr/sbin/postconf", True, False).level == PROBLEM
    assert postfix.judge_install("/srv/pf", None, True, True).fix == "apt-get install postfix"
    assert postfix.judge_install(None, "/usr/sbin/postconf", True, False) is None
