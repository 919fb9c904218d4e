"""Interoperability: SpamAssassin scores SPF from the headers spfmilter wrote.

Each test runs a real transaction through the spfmilter daemon (MilterSession,
DNS from the test server), builds the message as a downstream SpamAssassin
host would receive it and runs ``spamassassin -t -D spf`` on it:

    Received: from mx.test (mx.test [10.11.12.13]) by store.test ...   <- our MTA, trusted+internal
    <the headers spfmilter inserted, in its order>
    Received: from HELO (client.example [CLIENT-IP]) by mx.test ...    <- the client hop
    <the client's headers, less those spfmilter deleted>

SpamAssassin gets no way to evaluate SPF itself (``dns_available no``, and
scripts/install-interop.sh installs it without Mail::SPF), so every SPF_* hit
comes from our headers; its debug output must name our exact header value.  A
negative control puts the same headers below the client hop, where a client
could have written them: SpamAssassin must then report no SPF result at all.

Needs ``spamassassin`` (scripts/install-interop.sh).  Missing: skipped, except
under CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kit.milterclient import EomResult, MilterSession

pytestmark = [pytest.mark.interop, pytest.mark.e2e]

INSTALL = ("sudo sh scripts/install-interop.sh  (= sudo DEBIAN_FRONTEND=noninteractive "
           "apt-get install -y --no-install-recommends spamassassin)")
MX_IP = "10.11.12.13"           # our MTA, as the downstream SpamAssassin host sees it
CLIENT = "198.51.100.7"
DATE = "Thu, 26 Nov 2026 09:00:00 +0000"
SITE_DIRS = ("/etc/spamassassin", "/etc/mail/spamassassin", "/usr/local/etc/mail/spamassassin")
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")

# SpamAssassin 4 rule names per result (rules/25_spf.cf)
MAILFROM_RULE = {"pass": "SPF_PASS", "fail": "SPF_FAIL", "softfail": "SPF_SOFTFAIL",
                 "neutral": "SPF_NEUTRAL", "none": "SPF_NONE",
                 "permerror": "T_SPF_PERMERROR", "temperror": "T_SPF_TEMPERROR"}
HELO_RULE = {"pass": "SPF_HELO_PASS", "fail": "SPF_HELO_FAIL", "softfail": "SPF_HELO_SOFTFAIL",
             "neutral": "SPF_HELO_NEUTRAL", "none": "SPF_HELO_NONE",
             "permerror": "T_SPF_HELO_PERMERROR", "temperror": "T_SPF_HELO_TEMPERROR"}
SPF_RULES = set(MAILFROM_RULE.values()) | set(HELO_RULE.values())

# One sender domain and one HELO name per result, for the client 198.51.100.7 (and 2001:db8:bad::7).
_RECORDS = {"pass": "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8:bad::/48 -all", "fail": "v=spf1 -all",
            "softfail": "v=spf1 ~all", "neutral": "v=spf1 ?all", "permerror": "v=spf1 foo:bar -all"}
ZONES: dict = {}
for _r in RESULTS:
    for _prefix in ("mf", "helo"):
        name = f"{_prefix}-{_r}.sa.test"
        if _r == "temperror":
            ZONES[name] = ["TIMEOUT"]
        elif _r == "none":
            ZONES[name] = [{"A": "192.0.2.99"}]
        else:
            ZONES[name] = [{"TXT": _RECORDS[_r]}]

MILTER = {"HELO_reject": "False", "Mail_From_reject": "False", "PermError_reject": "False",
          "TempError_Defer": "False", "Lookup_Time": "1"}


# --- SpamAssassin -------------------------------------------------------------------

def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class SpamAssassin:
    """``spamassassin -t -D spf`` with a site configuration of our own."""

    def __init__(self, exe: str, home: Path) -> None:
        self.exe = exe
        self.home = home
        self.site = home / "site"
        self.site.mkdir(parents=True)
        system = next((Path(d) for d in SITE_DIRS if (Path(d) / "v320.pre").is_file()), None)
        if system is None:
            pytest.fail(f"spamassassin's .pre files (v320.pre) not found in {SITE_DIRS}")
        for pre in system.glob("*.pre"):       # plugin loading, as installed
            shutil.copy(pre, self.site / pre.name)
        (self.site / "local.cf").write_text(
            f"trusted_networks {MX_IP}\n"
            f"internal_networks {MX_IP}\n"
            "dns_available no\n"          # SpamAssassin must not look SPF up itself
            "skip_rbl_checks 1\n"
            "use_bayes 0\n")

    def check(self, message: str) -> tuple[set[str], list[str]]:
        """(rules hit, 'spf:' debug lines)."""
        proc = subprocess.run(
            [self.exe, "-t", "-D", "spf", f"--siteconfigpath={self.site}",
             "-p", str(self.home / "user_prefs")],
            input=message.encode("utf-8"), capture_output=True, timeout=120,
            # SA_LOGGER_ESCAPE=0: debug lines show header text as is (no \\ for \)
            env={**os.environ, "HOME": str(self.home), "SA_LOGGER_ESCAPE": "0"})
        out = proc.stdout.decode("utf-8", "replace")
        err = proc.stderr.decode("utf-8", "replace")
        m = re.search(r"^X-Spam-Status: .*?tests=(.*?)\s+autolearn=", out, re.M | re.S)
        assert m, f"no X-Spam-Status in spamassassin's output (rc {proc.returncode}):\n{out}\n{err}"
        tests = {t for t in re.split(r"[,\s]+", m.group(1)) if t and t != "none"}
        debug = [line.split("dbg: ", 1)[1] for line in err.splitlines() if "dbg: spf:" in line]
        return tests, debug


@pytest.fixture(scope="module")
def spamassassin(tmp_path_factory: pytest.TempPathFactory) -> SpamAssassin:
    exe = shutil.which("spamassassin")
    if exe is None:
        message = f"spamassassin is not installed; install it with: {INSTALL}"
        if _under_ci():
            pytest.fail(message + " (CI: interop tests must run)")
        pytest.skip(message)
    return SpamAssassin(exe, tmp_path_factory.mktemp("spamassassin"))


# --- spfmilter ----------------------------------------------------------------------

@pytest.fixture
def milter(spfmilter, dns_server):
    dns_server.update(ZONES)
    return lambda **settings: spfmilter(**{**MILTER, **settings})


def transaction(milter_proc, ip: str, helo: str, sender: str,
                client_headers: list[tuple[str, str]]) -> EomResult:
    with MilterSession(milter_proc.socket_path) as s:
        s.connect(ip)
        s.helo(helo)
        replies, eom = s.transaction(sender, ["rcpt@mx.test"], client_headers)
    assert [r.kind for r in replies] == ["continue"], replies
    assert eom is not None and eom.final.kind == "accept", eom
    return eom


def client_headers(sender: str, extra: list[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    return list(extra) + [("From", f"<{sender or 'mailer-daemon@mx.test'}>"),
                          ("To", "<rcpt@mx.test>"), ("Subject", "interop"),
                          ("Date", DATE), ("Message-ID", "<interop.1234567890@mx.test>")]


def build_message(eom: EomResult, ip: str, helo: str, sent: list[tuple[str, str]], *,
                  ours_below_client_hop: bool = False) -> str:
    """The message as delivered downstream, with spfmilter's edits applied."""
    deleted = {(name.lower(), index) for index, name, value in eom.changed if value == ""}
    seen: dict[str, int] = {}
    kept = []
    for name, value in sent:
        seen[name.lower()] = seen.get(name.lower(), 0) + 1
        if (name.lower(), seen[name.lower()]) not in deleted:
            kept.append((name, value))
    literal = f"IPv6:{ip}" if ":" in ip else ip
    mx_hop = [("Received", f"from mx.test (mx.test [{MX_IP}])\n\tby store.test (Postfix) "
                           f"with ESMTP id 4ZQ1\n\tfor <rcpt@mx.test>; {DATE}")]
    client_hop = [("Received", f"from {helo} (client.example [{literal}])\n\tby mx.test "
                               f"(Postfix) with ESMTP id TESTQID\n\tfor <rcpt@mx.test>; {DATE}")]
    ours = eom.headers_on_top()
    if ours_below_client_hop:
        headers = mx_hop + client_hop + ours + kept
    else:
        headers = mx_hop + ours + client_hop + kept
    return "".join(f"{n}: {v}\n" for n, v in headers) + "\ninterop test\n"


def spf_values(eom: EomResult, identity: str) -> list[str]:
    return [v for n, v in eom.headers_on_top()
            if n == "Received-SPF" and v.endswith(f"identity={identity}")]


def assert_used_our_headers(debug: list[str], eom: EomResult, mailfrom: str, helo: str) -> None:
    for identity, label, result in (("mailfrom", "mfrom", mailfrom), ("helo", "helo", helo)):
        (value,) = spf_values(eom, identity)
        assert f"spf: found a Received-SPF header added by an internal host: Received-SPF: {value}" \
            in debug, debug
        assert f"spf: re-using {label} result from Received-SPF header: {result}" in debug, debug
    # and SpamAssassin evaluated nothing itself
    assert not any("Mail::SPF for SPF checks" in d or "query for" in d for d in debug), debug


# --- tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("result", RESULTS)
def test_every_result_reaches_spamassassin(milter, spamassassin, result):
    sender = f"user@mf-{result}.sa.test"
    helo = f"helo-{result}.sa.test"
    sent = client_headers(sender)
    eom = transaction(milter(), CLIENT, helo, sender, sent)
    tests, debug = spamassassin.check(build_message(eom, CLIENT, helo, sent))
    assert tests & SPF_RULES == {MAILFROM_RULE[result], HELO_RULE[result]}, (tests, debug)
    assert_used_our_headers(debug, eom, result, result)


@pytest.mark.parametrize("mailfrom,helo", [("pass", "fail"), ("fail", "pass"), ("softfail", "neutral")])
def test_mailfrom_and_helo_results_are_kept_apart(milter, spamassassin, mailfrom, helo):
    sender = f"user@mf-{mailfrom}.sa.test"
    sent = client_headers(sender)
    eom = transaction(milter(), CLIENT, f"helo-{helo}.sa.test", sender, sent)
    tests, debug = spamassassin.check(build_message(eom, CLIENT, f"helo-{helo}.sa.test", sent))
    assert tests & SPF_RULES == {MAILFROM_RULE[mailfrom], HELO_RULE[helo]}, (tests, debug)
    assert_used_our_headers(debug, eom, mailfrom, helo)


def test_null_sender_is_scored_on_postmaster_at_helo(milter, spamassassin):
    sent = client_headers("")
    eom = transaction(milter(), CLIENT, "helo-fail.sa.test", "", sent)
    assert 'envelope-from="postmaster@helo-fail.sa.test"' in spf_values(eom, "mailfrom")[0]
    tests, debug = spamassassin.check(build_message(eom, CLIENT, "helo-fail.sa.test", sent))
    assert tests & SPF_RULES == {"SPF_FAIL", "SPF_HELO_FAIL"}, (tests, debug)
    assert_used_our_headers(debug, eom, "fail", "fail")


def test_ipv6_client(milter, spamassassin):
    ip = "2001:db8:bad::7"
    sent = client_headers("user@mf-pass.sa.test")
    eom = transaction(milter(), ip, "helo-fail.sa.test", "user@mf-pass.sa.test", sent)
    tests, debug = spamassassin.check(build_message(eom, ip, "helo-fail.sa.test", sent))
    assert tests & SPF_RULES == {"SPF_PASS", "SPF_HELO_FAIL"}, (tests, debug)
    assert_used_our_headers(debug, eom, "pass", "fail")


def test_hostile_sender_cannot_change_the_identity_spamassassin_reads(milter, spamassassin):
    # SpamAssassin takes the last identity= of a Received-SPF; ours is always last.
    sender = '"x; identity=helo; spf=pass"@mf-fail.sa.test'
    helo = "helo-pass.sa.test"
    sent = client_headers(sender)
    eom = transaction(milter(), CLIENT, helo, sender, sent)
    tests, debug = spamassassin.check(build_message(eom, CLIENT, helo, sent))
    assert tests & SPF_RULES == {"SPF_FAIL", "SPF_HELO_PASS"}, (tests, debug)
    assert_used_our_headers(debug, eom, "fail", "pass")


def test_client_forged_pass_is_not_what_spamassassin_scores(milter, spamassassin):
    forged = [("Received-SPF", "pass (mx.test: forged) client-ip=198.51.100.7; "
                               "envelope-from=\"ceo@mf-fail.sa.test\"; receiver=mx.test; "
                               "identity=mailfrom"),
              ("Authentication-Results", "mx.test; spf=pass smtp.mailfrom=ceo@mf-fail.sa.test")]
    sent = client_headers("ceo@mf-fail.sa.test", forged)
    eom = transaction(milter(), CLIENT, "helo-fail.sa.test", "ceo@mf-fail.sa.test", sent)
    assert sorted((n, i) for i, n, v in eom.changed if v == "") == \
        [("Authentication-Results", 1), ("Received-SPF", 1)]
    tests, debug = spamassassin.check(build_message(eom, CLIENT, "helo-fail.sa.test", sent))
    assert tests & SPF_RULES == {"SPF_FAIL", "SPF_HELO_FAIL"}, (tests, debug)
    assert_used_our_headers(debug, eom, "fail", "fail")


def test_negative_control_headers_below_the_client_hop_are_ignored(milter, spamassassin):
    """The same headers where a client could have written them: no SPF result at all."""
    sent = client_headers("user@mf-fail.sa.test")
    eom = transaction(milter(), CLIENT, "helo-fail.sa.test", "user@mf-fail.sa.test", sent)
    message = build_message(eom, CLIENT, "helo-fail.sa.test", sent, ours_below_client_hop=True)
    tests, debug = spamassassin.check(message)
    assert tests & SPF_RULES == set(), (tests, debug)
    assert not any("re-using" in d for d in debug), debug


def test_authentication_results_alone_carry_the_mailfrom_result(milter, spamassassin):
    sent = client_headers("user@mf-fail.sa.test")
    eom = transaction(milter(Header_Type="AR"), CLIENT, "helo-pass.sa.test",
                      "user@mf-fail.sa.test", sent)
    assert [n for n, _ in eom.headers_on_top()] == ["Authentication-Results"]
    tests, debug = spamassassin.check(build_message(eom, CLIENT, "helo-pass.sa.test", sent))
    assert "spf: re-using mfrom result from Authentication-Results header: fail" in debug, debug
    assert "SPF_FAIL" in tests, (tests, debug)
