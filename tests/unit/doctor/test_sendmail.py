"""Sendmail's rules over a sendmail.cf written here: no Sendmail needed.

The same rules against a real Sendmail are in tests/integration/test_doctor.py.
"""

from spfmilter.doctor import sendmail
from spfmilter.doctor.findings import OK, PROBLEM
from spfmilter.doctor.sendmail import DEFAULT_SENDMAIL_CF, Filter, Folder
from tests.unit.doctor.kit import ours

SOCK = "unix:/run/spfmilter/spfmilter.sock"


def cf(flags="T", timeouts="S:30s;R:60s;E:5m", declared="spfmilter",
       macros="i, {auth_authen}", path=DEFAULT_SENDMAIL_CF):
    text = (f"O InputMailFilters={declared}\nO Milter.macros.envfrom={macros}\n"
            f"Xspfmilter, S={SOCK}, F={flags}, T={timeouts}\n"
            "Xother, S=inet:8891@127.0.0.1, F=T\n")
    facts = sendmail.parse(path, text)
    mine = sendmail.find_ours(facts, ours(SOCK))
    assert mine is not None and mine.name == "spfmilter"
    return facts, mine


def test_the_documented_filter_gives_only_ok_lines():
    facts, mine = cf()
    assert {f.level for f in sendmail.judge(facts, ours(SOCK), mine)} == {OK}


def test_without_f_t_sendmail_skips_the_filter_while_spfmilter_is_down():
    facts, mine = cf(flags="")
    [f] = sendmail.judge_flags(facts, ours(SOCK), mine)
    assert f.level == PROBLEM
    assert f.message.startswith("/etc/mail/sendmail.cf: filter spfmilter has F=(none): Sendmail "
                                "lets mail through unchecked (Sendmail silently skips the filter)"
                                " while spfmilter is down; write F=T")
    assert f.fix == "make -C /etc/mail && systemctl restart sendmail"


def test_f_r_rejects_while_spfmilter_is_down():
    facts, mine = cf(flags="R")
    [f] = sendmail.judge_flags(facts, ours(SOCK), mine)
    assert "has F=R: Sendmail rejects mail (5xx)" in f.message


def test_timeouts_not_longer_than_lookup_time_and_sendmails_default():
    facts, mine = cf(timeouts="R:2s")
    found = sendmail.judge_timeouts(facts, ours(SOCK, lookup=5), mine)
    assert [f.level for f in found] == [PROBLEM, OK]
    assert found[0].message.startswith("spfmilter: T=R:2s (reading a reply) is not longer than "
                                       "Lookup_Time = 5s: Sendmail gives up")
    assert found[1].message == ("spfmilter: T=E:5m (end of message) is longer than "
                                "Lookup_Time = 5s")
    found = sendmail.judge_timeouts(facts, ours(SOCK, lookup=400), mine)
    assert "T=E:5m (end of message, Sendmail's default) is not longer" in found[1].message


def test_a_filter_not_in_input_mail_filters_is_a_problem_and_another_cf_is_rebuilt_by_hand():
    facts, mine = cf(declared="other", path="/srv/mail/sendmail.cf")
    [f] = sendmail.judge_input_filters(facts, ours(SOCK), mine)
    assert f.level == PROBLEM and f.fix is None
    assert "filter spfmilter is defined but not in InputMailFilters (other)" in f.message
    assert f.message.endswith("; then rebuild /srv/mail/sendmail.cf from its .mc (m4) and "
                              "restart sendmail")


def test_macros_without_auth_authen_and_i_are_named():
    facts, _ = cf(macros="j")
    [f] = sendmail.judge_macros(facts)
    assert "Milter.macros.envfrom lacks i and {auth_authen}" in f.message


def test_a_writable_socket_folder_is_refused_by_sendmail():
    folder = Folder("/run/spfmilter", 0o40777, "drwxrwxrwx root:root (0777)")
    f = Filter("spfmilter", {}, ours(SOCK).endpoint, None, folder)
    [found] = sendmail.judge_folder(f)
    assert found.fix == "chmod go-w /run/spfmilter"
    assert sendmail.judge_folder(Filter("spfmilter", {}, None, None, None)) == []


def test_no_filter_for_our_socket_lists_the_others():
    facts = sendmail.parse(DEFAULT_SENDMAIL_CF, "Xother, S=inet:8891@127.0.0.1, F=T\n")
    assert sendmail.find_ours(facts, ours(SOCK)) is None
    f = sendmail.judge_missing(facts, ours(SOCK))
    assert f.message.startswith(f"/etc/mail/sendmail.cf has no X (INPUT_MAIL_FILTER) line for "
                                f"spfmilter's Socket = {SOCK} (filters: other "
                                "S=inet:8891@127.0.0.1); add INPUT_MAIL_FILTER(")


def test_no_sendmail_is_ok_but_a_named_missing_file_is_a_problem():
    assert sendmail.judge_install(None, False).level == OK
    assert sendmail.judge_install("/srv/x.cf", False).level == PROBLEM
    assert sendmail.judge_install(None, True) is None
