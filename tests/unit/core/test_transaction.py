"""The transaction: what is evaluated, in which order, within which budgets (a recording checker)."""

import concurrent.futures
import time

import pytest

from spfmilter import config as cfg
from spfmilter.core.transaction import Connection, Transaction
from spfmilter.core.values import Action, SPFResult


class Recorder:
    """An SPF checker that records its calls; every sender passes unless listed."""

    def __init__(self, results=None, cost=0.0):
        self.calls = []
        self.domains = []
        self.results = results or {}
        self.cost = cost

    def __call__(self, identity, ip, sender, helo, *, lookup_time, local_rules="", best_guess=""):
        self.calls.append((identity, sender, round(lookup_time, 1), local_rules, best_guess))
        time.sleep(self.cost)  # the time a lookup takes, which the budget must account for
        checked = sender or f"postmaster@{helo}"
        return SPFResult(identity, self.results.get(checked, "pass"), checked,
                         checked.rpartition("@")[2], "", False)

    def each(self, calls, domains=()):
        self.domains.append(list(domains))
        return [call() for call in calls]


class Concurrent(Recorder):
    """Runs a message's evaluations on threads of their own, as the real checker does."""

    def each(self, calls, domains=()):
        with concurrent.futures.ThreadPoolExecutor(len(calls) or 1) as pool:
            return list(pool.map(lambda call: call(), calls))


def settings(**kw):
    return cfg.from_mapping({"Authserv_Id": "mx.test", "skip_addresses": "", **kw}).policy


def test_helo_is_evaluated_once_per_connection_and_again_for_a_new_name():
    conn, s, check = Connection("192.0.2.10"), settings(), Recorder()
    conn.hello("a.test")
    for sender in ("u@one.test", "u@two.test"):
        txn = Transaction(conn, s, sender)
        txn.evaluate(check)
        txn.evaluate(check)  # once per message, however often asked
    conn.hello("b.test")
    Transaction(conn, s, "u@three.test").evaluate(check)
    assert [c[:2] for c in check.calls] == [("helo", ""), ("mailfrom", "u@one.test"),
                                           ("mailfrom", "u@two.test"), ("helo", ""),
                                           ("mailfrom", "u@three.test")]


def test_null_sender_reuses_the_helo_evaluation():
    conn, check = Connection("192.0.2.10"), Recorder({"postmaster@bad.test": "fail"})
    conn.hello("bad.test")
    txn = Transaction(conn, settings(), "")
    txn.evaluate(check)
    assert [c[0] for c in check.calls] == ["helo"]
    assert txn.mailfrom_result.identity == "mailfrom" and txn.mailfrom_result.result == "fail"
    assert txn.rcpt("r@mx.test").action is Action.REJECT


def test_each_identity_has_its_own_full_budget_and_the_waits_overlap():
    conn, check = Connection("192.0.2.10"), Concurrent(cost=0.3)
    conn.hello("h.test")
    txn = Transaction(conn, settings(Lookup_Time="2", Domain_Whitelist="fwd.test, fwd2.test",
                                     Whitelist_Lookup_Time="1.5"), "u@x.test")
    check.results["postmaster@fwd.test"] = "fail"
    check.results["postmaster@fwd2.test"] = "fail"
    started = time.monotonic()
    txn.evaluate(check)
    took = time.monotonic() - started
    assert sorted(c[2] for c in check.calls) == [1.5, 1.5, 2.0, 2.0]
    assert took < 0.3 * 2, took            # concurrently: the slowest, not the sum
    assert txn.whitelisted_by is None
    capped = Transaction(conn, settings(Lookup_Time="1", Domain_Whitelist="fwd.test",
                                        Whitelist_Lookup_Time="5"), "u@x.test")
    check.calls.clear()
    capped.evaluate(check)                 # never longer than the message's Lookup_Time
    assert sorted(c[2] for c in check.calls) == [1.0, 1.0]   # HELO known: MAIL FROM, whitelist


def test_a_helo_that_spends_its_budget_leaves_mail_froms_intact():
    """The HELO's DNS never answers (temperror after its Lookup_Time): the forged
    sender's fail still refuses the mail (a fail beats another identity's temperror)."""
    class SlowHelo(Concurrent):
        def __call__(self, identity, ip, sender, helo, *, lookup_time, **kw):
            if identity == "helo":
                time.sleep(lookup_time)
                self.calls.append((identity, sender, lookup_time))
                return SPFResult("helo", "temperror", f"postmaster@{helo}", helo,
                                 "SPF Temporary Error: DNS timeout", False)
            return super().__call__(identity, ip, sender, helo, lookup_time=lookup_time, **kw)

    conn, check = Connection("198.51.100.9"), SlowHelo({"ceo@bank.example": "fail"})
    conn.hello("h-temp.test")
    txn = Transaction(conn, settings(Lookup_Time="0.5"), "ceo@bank.example")
    txn.evaluate(check)
    assert txn.helo_result.result == "temperror" and txn.mailfrom_result.result == "fail"
    verdict = txn.rcpt("r@mx.test")
    assert verdict.action is Action.REJECT and verdict.reply.status == "5.7.23"
    deferring = Transaction(conn, settings(Lookup_Time="0.5", TempError_Defer="yes"),
                            "ceo@bank.example")
    deferring.evaluate(check)          # a certain fail is not turned into a deferral either
    assert deferring.rcpt("r@mx.test").action is Action.REJECT


def test_not_checked_identities_and_skips():
    conn, check = Connection("192.0.2.10"), Recorder()
    conn.hello("h.test")
    txn = Transaction(conn, settings(HELO_reject="No_Check"), "u@x.test")
    txn.evaluate(check)
    assert txn.helo_result is None and [c[0] for c in check.calls] == ["mailfrom"]
    assert [n for n, _ in txn.result_headers()] == ["Authentication-Results", "Received-SPF"]
    skipped = Transaction(conn, settings(), "u@x.test", auth_user="alice")
    skipped.evaluate(check)
    assert skipped.skipped == "authenticated" and skipped.result_headers() == ()
    assert skipped.rcpt("r@mx.test").action is Action.ACCEPT


def test_local_rules_and_best_guess_reach_the_checker_but_not_the_whitelist_checks():
    conn, check = Connection("192.0.2.10"), Recorder({"u@x.test": "fail"})
    conn.hello("h.test")
    txn = Transaction(conn, settings(Local_Rules="ip4:203.0.113.0/24", Best_Guess="v=spf1 a -all",
                                     Domain_Whitelist="fwd.test"), "u@x.test")
    txn.evaluate(check)
    helo, mailfrom, whitelist = check.calls
    assert helo[3:] == ("ip4:203.0.113.0/24", "")
    assert mailfrom[3:] == ("ip4:203.0.113.0/24", "v=spf1 a -all")
    assert whitelist[1:2] == ("postmaster@fwd.test",) and whitelist[3:] == ("", "")
    assert txn.whitelisted_by == "fwd.test" and txn.rcpt("r@mx.test").action is Action.ACCEPT


def test_the_checker_is_told_which_domain_each_evaluation_checks_in_order():
    """So that it may ask for the later evaluations' records while the first runs."""
    conn, check = Connection("192.0.2.10"), Recorder()
    conn.hello("h.test")
    Transaction(conn, settings(Domain_Whitelist="fwd.test"), "u@x.test").evaluate(check)
    Transaction(conn, settings(), "").evaluate(check)            # HELO known: nothing to ask
    assert check.domains == [["h.test", "x.test", "fwd.test"], []]


def test_behind_a_trusted_relay_spf_is_for_the_hop_at_end_of_headers():
    conn, check = Connection("10.0.0.1"), Recorder({"u@x.test": "fail"})
    conn.hello("relay.internal")
    s = settings(Trusted_Relays="10.0.0.0/8")
    txn = Transaction(conn, s, "u@x.test")
    txn.evaluate(check)
    assert check.calls == []                                   # nothing for the relay itself
    assert txn.rcpt("a@mx.test").action is Action.ACCEPT
    txn.header("Received", "from relay.internal (relay [10.0.0.1]) by mx.test (Postfix)")
    txn.header("Received", "from helo.test (unknown [192.0.2.10]) by relay.internal (Postfix)")
    assert txn.end_of_headers(check)
    assert [c[:2] for c in check.calls] == [("helo", ""), ("mailfrom", "u@x.test")]
    assert (txn.facts.client_ip, txn.facts.helo) == ("192.0.2.10", "helo.test")
    verdict = txn.end_of_message(lambda *a, **k: [], lambda d: d, None)
    assert verdict.action is Action.REJECT and verdict.reply.status == "5.7.23"
    assert "client-ip=192.0.2.10;" in dict(txn.result_headers())["Received-SPF"]


def test_a_relay_header_that_does_not_read_is_deferred_by_default():
    conn = Connection("10.0.0.1")
    txn = Transaction(conn, settings(Trusted_Relays="10.0.0.0/8"), "u@x.test")
    txn.rcpt("a@mx.test")
    txn.header("Received", "from relay.internal (relay [10.0.0.1]) by mx.test")
    assert not txn.end_of_headers(Recorder())
    verdict = txn.end_of_message(lambda *a, **k: [], lambda d: d, None)
    assert verdict.action is Action.DEFER and (verdict.reply.code, verdict.reply.status) == \
        ("451", "4.7.24")
    assert "trusted relay 10.0.0.1: its Received headers name only trusted relays" in \
        verdict.reply.text


@pytest.mark.parametrize("mode,action,code", [("Reject", Action.REJECT, "550"),
                                              ("Defer", Action.DEFER, "451")])
def test_an_unreadable_relay_header_is_never_better_than_a_check(mode, action, code):
    txn = Transaction(Connection("10.0.0.1"), settings(Trusted_Relays="10.0.0.0/8",
                                                       Trusted_Relays_Unreadable=mode), "u@x.test")
    txn.rcpt("a@mx.test")
    txn.header("Received", "from x (" + "y" * 20000 + " [192.0.2.1]) by relay.internal")
    txn.end_of_headers(Recorder())
    verdict = txn.end_of_message(lambda *a, **k: [], lambda d: d, None)
    assert verdict.action is action and verdict.reply.code == code
    assert "longer than" in verdict.reason


def test_an_unreadable_relay_header_can_be_accepted_with_a_header_that_says_so():
    conn = Connection("10.0.0.1")
    txn = Transaction(conn, settings(Trusted_Relays="10.0.0.0/8", Mail_From_reject="Strict",
                                     Trusted_Relays_Unreadable="Accept"), "u@x.test")
    txn.rcpt("a@mx.test")
    assert not txn.end_of_headers(Recorder())
    verdict = txn.end_of_message(lambda *a, **k: [], lambda d: d, None)
    assert verdict.action is Action.ACCEPT and "wrote no Received header" in verdict.reason
    hdrs = dict(txn.result_headers())
    assert hdrs["Received-SPF"].startswith("none (mx.test: trusted relay 10.0.0.1: it wrote no "
                                           "Received header; not checked) client-ip=10.0.0.1;")
    assert ("spf=none (trusted relay 10.0.0.1: it wrote no Received header) "
            "smtp.mailfrom=x.test") in hdrs["Authentication-Results"]


def test_mail_the_relay_originated_is_checked_for_the_relay_itself():
    conn, check = Connection("10.0.0.1"), Recorder({"u@x.test": "fail"})
    conn.hello("relay.internal")
    txn = Transaction(conn, settings(Trusted_Relays="10.0.0.0/8"), "u@x.test")
    txn.rcpt("a@mx.test")
    txn.header("Received", "by relay.internal (Postfix, from userid 0) id 4X; Fri, 4 Dec 2026")
    assert txn.end_of_headers(check)
    assert (txn.facts.client_ip, txn.facts.helo) == ("10.0.0.1", "relay.internal")
    assert txn.end_of_message(lambda *a, **k: [], lambda d: d, None).action is Action.REJECT


def test_recipients_of_another_policy_wait_for_their_own_transaction_behind_a_relay():
    s = cfg.parse_text("Authserv_Id = mx.test\nTrusted_Relays = 10.0.0.0/8\n"
                       "[recipient @strict.test]\nMail_From_reject = Strict\n").policy
    txn = Transaction(Connection("10.0.0.1"), s, "u@x.test")
    assert txn.rcpt("a@mx.test").action is Action.ACCEPT
    assert txn.rcpt("b@mx.test").action is Action.ACCEPT
    split = txn.rcpt("c@strict.test")
    assert split.action is Action.DEFER and split.reply.code == "452"
    assert txn.recipients == ["a@mx.test", "b@mx.test"]


def test_the_facts_follow_what_the_mta_says_after_they_were_read():
    """The facts are made once and kept while nothing they hold changes; a new HELO,
    queue id, sender or client address is in the next ones asked for."""
    conn = Connection("192.0.2.10")
    conn.hello("one.test")
    txn = Transaction(conn, settings(), "u@x.test")
    first = txn.facts
    assert txn.facts is first
    conn.hello("two.test")
    assert txn.facts.helo == "two.test"
    txn.queue_id = "4XyZ"
    assert txn.facts.queue_id == "4XyZ"
    txn.sender = "v@y.test"
    assert txn.facts.sender == "v@y.test"
    conn.client_ip = "198.51.100.1"
    assert txn.facts.client_ip == "198.51.100.1"
    txn.auth_user = "someone"
    assert txn.facts.auth_user == "someone"
