"""The pure decision: plain facts and SPF results in, a verdict for one recipient out."""

import pytest

from spfmilter import config as cfg
from spfmilter.core.decision import decide, plan, reported
from spfmilter.core.headers import result_headers
from spfmilter.core.values import Action, Facts, SPFResult

ACCEPT, REJECT, DEFER = Action.ACCEPT, Action.REJECT, Action.DEFER
RCPT = "rcpt@mx.test"

BASE = cfg.from_mapping({"Authserv_Id": "mx.test", "skip_addresses": "127.0.0.0/8, ::1"}).policy


def res(identity, result, sender="user@example.com", exp="", published=False):
    return SPFResult(identity, result, sender, sender.rpartition("@")[2], exp, published)


def facts(**kw):
    base = dict(client_ip="198.51.100.7", helo="mail.example.com", sender="user@example.com")
    base.update(kw)
    return Facts(**base)


def settings(**kw):
    return cfg.from_mapping({"Authserv_Id": "mx.test", **kw}).policy


def test_pass_is_accepted_with_both_headers():
    helo, mailfrom = res("helo", "pass", "postmaster@mail.example.com"), res("mailfrom", "pass")
    d = decide(facts(), RCPT, helo, mailfrom, BASE)
    assert d.action == ACCEPT and d.reply is None
    headers = result_headers(facts(), helo, mailfrom, BASE)
    assert [n for n, _ in headers] == ["Authentication-Results", "Received-SPF", "Received-SPF"]
    assert "identity=mailfrom" in headers[1][1] and "identity=helo" in headers[2][1]


def test_mailfrom_fail_is_rejected_5723_with_published_explanation():
    exp = "198.51.100.7 is not one of example.com's designated mail servers"
    d = decide(facts(), RCPT, res("helo", "none"), res("mailfrom", "fail", exp=exp, published=True), BASE)
    assert (d.action, d.reply.code, d.reply.status) == (REJECT, "550", "5.7.23")
    assert exp in d.reply.text and "fail" in d.reply.text


def test_default_explanation_when_none_published():
    d = decide(facts(), RCPT, None, res("mailfrom", "fail", exp="SPF fail - not authorized"), BASE)
    assert "example.com does not authorize 198.51.100.7" in d.reply.text


@pytest.mark.parametrize("policy,result,action", [
    ("Fail", "softfail", ACCEPT), ("Softfail", "softfail", REJECT),
    ("SPF_Not_Pass", "neutral", REJECT), ("SPF_Not_Pass", "none", ACCEPT),
    ("SPF_Not_Pass", "temperror", ACCEPT), ("False", "fail", ACCEPT), ("Fail", "fail", REJECT),
])
def test_mail_from_policies(policy, result, action):
    d = decide(facts(), RCPT, None, res("mailfrom", result), settings(Mail_From_reject=policy))
    assert d.action == action


@pytest.mark.parametrize("policy,sender,action", [
    ("Fail", "user@example.com", REJECT), ("Null", "user@example.com", ACCEPT),
    ("Null", "", REJECT), ("False", "", ACCEPT),
])
def test_helo_policies(policy, sender, action):
    d = decide(facts(sender=sender), RCPT, res("helo", "fail", "postmaster@mail.example.com"),
               res("mailfrom", "pass"), settings(HELO_reject=policy))
    assert d.action == action
    if action == REJECT:
        assert d.reason == "helo fail" and "HELO" in d.reply.text


def test_permerror_and_temperror_follow_their_switches():
    perm, temp = res("mailfrom", "permerror", exp="SPF Permanent Error: x"), res("mailfrom", "temperror")
    assert decide(facts(), RCPT, None, perm, BASE).action == ACCEPT
    d = decide(facts(), RCPT, None, perm, settings(PermError_reject="True"))
    assert (d.action, d.reply.code, d.reply.status) == (REJECT, "550", "5.7.24")
    assert decide(facts(), RCPT, None, temp, BASE).action == ACCEPT
    d = decide(facts(), RCPT, None, temp, settings(TempError_Defer="True"))
    assert (d.action, d.reply.code, d.reply.status) == (DEFER, "451", "4.7.24")
    assert d.reply.text.startswith("Message deferred")


def test_reject_beats_defer():
    d = decide(facts(), RCPT, res("helo", "temperror"), res("mailfrom", "fail"), settings(TempError_Defer="True"))
    assert d.action == REJECT


def test_exempt_recipient_is_never_refused():
    s = settings(Exempt_Recipients="postmaster@, @abuse.test")
    assert decide(facts(), "Postmaster@mx.test", None, res("mailfrom", "fail"), s).action == ACCEPT
    assert decide(facts(), "x@abuse.test", None, res("mailfrom", "fail"), s).action == ACCEPT
    assert decide(facts(), "user@mx.test", None, res("mailfrom", "fail"), s).action == REJECT
    assert s.exempt("<postmaster@any.where>")


def test_test_only_never_refuses_but_says_what_it_would_do():
    d = decide(facts(), RCPT, None, res("mailfrom", "fail"), settings(TestOnly="0"))
    assert d.action == ACCEPT and "would reject" in d.reason and d.reply is None


def test_plan_skips():
    assert plan(facts(client_ip="127.0.0.1"), BASE).skip == "skip_addresses"
    assert plan(facts(client_ip="::ffff:127.0.0.2"), BASE).skip == "skip_addresses"
    assert plan(facts(auth_user="alice"), BASE).skip == "authenticated"
    assert plan(facts(client_ip="192.0.2.5"), settings(Whitelist="192.0.2.0/24")).skip == "whitelist"
    p = plan(facts(), settings(HELO_reject="No_Check", Domain_Whitelist="fwd.test"))
    assert p.skip is None and not p.check_helo and p.check_mailfrom
    assert p.whitelist_domains == ("fwd.test",)


def test_skip_adds_no_headers_and_never_refuses():
    d = decide(facts(), RCPT, res("helo", "fail"), res("mailfrom", "fail"), BASE, skip="authenticated")
    assert d.action == ACCEPT and d.reply is None and "authenticated" in d.reason


def test_whitelists():
    d = decide(facts(), RCPT, None, res("mailfrom", "fail"), BASE, whitelisted_by="fwd.test")
    assert d.action == ACCEPT and "fwd.test" in d.reason
    s = settings(HELO_Whitelist="mail.example.com")
    d = decide(facts(), RCPT, res("helo", "pass"), res("mailfrom", "fail"), s)
    assert d.action == ACCEPT
    d = decide(facts(), RCPT, res("helo", "neutral"), res("mailfrom", "fail"), s)
    assert d.action == REJECT


@pytest.mark.parametrize("header_type,names", [
    ("SPF", ["Received-SPF", "Received-SPF"]), ("AR", ["Authentication-Results"]), ("None", []),
])
def test_header_type(header_type, names):
    headers = result_headers(facts(), res("helo", "pass"), res("mailfrom", "pass"),
                             settings(Header_Type=header_type))
    assert [n for n, _ in headers] == names


def test_reason_template_and_hostile_explanation():
    s = settings(Reason_Message="{rejectdefer}|{result}|{identity}|{sender}|{ip}|{exp}")
    d = decide(facts(), RCPT, None, res("mailfrom", "fail", exp="bad\r\nX-Injected: 1", published=True), s)
    assert "\r" not in d.reply.text and "\n" not in d.reply.text
    assert d.reply.text.startswith("rejected|fail|MAIL FROM|user@example.com|198.51.100.7|bad??X-Injected")


def test_every_reply_field_is_ascii_for_a_utf8_sender_helo_explanation_and_template():
    s = settings(Reason_Message="Abgewiesen für {sender} {domain} {helo} {exp} {url}")
    sender = "jürgen@bücher.example"
    d = decide(facts(helo="hélo.example", sender=sender), RCPT, None,
               res("mailfrom", "fail", sender=sender, exp="nicht erlaubt: Grüße", published=True), s)
    assert d.reply.text.isascii(), d.reply.text
    assert d.reply.text.startswith(r"Abgewiesen f\x{FC}r j\x{FC}rgen@xn--bcher-kva.example "
                                   r"xn--bcher-kva.example xn--hlo-bma.example "
                                   r"nicht erlaubt: Gr\x{FC}\x{DF}e https://"), d.reply.text


@pytest.mark.parametrize("policy,refused", [
    ("Neutral", {"fail", "softfail", "neutral"}),
    ("Strict", {"fail", "softfail", "neutral", "none", "permerror"}),
])
def test_qmail_levels_five_and_six(policy, refused):
    for result in ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"):
        d = decide(facts(), RCPT, None, res("mailfrom", result), settings(Mail_From_reject=policy))
        assert (d.action == REJECT) == (result in refused), result


def test_reject_not_pass_domains():
    s = settings(Mail_From_reject="False", Reject_Not_Pass_Domains="example.com")
    assert decide(facts(), RCPT, None, res("mailfrom", "neutral"), s).action == REJECT
    assert decide(facts(), RCPT, None, res("mailfrom", "pass"), s).action == ACCEPT
    assert decide(facts(), RCPT, None, res("mailfrom", "neutral", "u@other.example"), s).action == ACCEPT


def test_plain_status_codes_when_enhanced_codes_are_off():
    s = settings(SPF_Enhanced_Status_Codes="No", TempError_Defer="yes")
    assert decide(facts(), RCPT, None, res("mailfrom", "fail"), s).reply.status == "5.7.1"
    assert decide(facts(), RCPT, None, res("mailfrom", "temperror"), s).reply.status == "4.4.3"


def test_reason_url_placeholder():
    s = settings(Reason_Message="see {url}", Reason_URL="https://why.example/?s={0}&id={1}&ip={2}&r={3}")
    d = decide(facts(), RCPT, None, res("mailfrom", "fail"), s)
    assert d.reply.text == "see https://why.example/?s=mfrom&id=user@example.com&ip=198.51.100.7&r=mx.test"


def test_recipient_sections_change_the_decision_for_their_recipients():
    s = cfg.parse_text("""
Authserv_Id = mx.test
Mail_From_reject = Fail
[recipient @strict.test]
Mail_From_reject = SPF_Not_Pass
[recipient postmaster@]
Mail_From_reject = False
TestOnly = 0
""").policy
    soft = res("mailfrom", "softfail")
    assert decide(facts(), "a@strict.test", None, soft, s).action == REJECT
    assert decide(facts(), "a@mx.test", None, soft, s).action == ACCEPT
    assert decide(facts(), "postmaster@strict.test", None, res("mailfrom", "fail"), s).action == REJECT
    assert decide(facts(), "postmaster@mx.test", None, res("mailfrom", "fail"), s).action == ACCEPT
    assert decide(facts(), RCPT, None, res("mailfrom", "fail"), s).action == REJECT


def test_internal_hosts_are_skipped():
    assert plan(facts(client_ip="10.0.0.5"), settings(InternalHosts="10.0.0.0/8")).skip == "InternalHosts"


def _org(name):
    """Organizational domain for these tests: the last two labels."""
    return ".".join(name.split(".")[-2:])


def test_dkim_rescue_holds_refusals_and_rescue_decides_at_end_of_message():
    from spfmilter.core.decision import rescue
    from spfmilter.core.values import DKIMResult

    s = settings(DKIM_Rescue="yes")
    held = decide(facts(), RCPT, None, res("mailfrom", "fail"), s)
    assert held.action == ACCEPT and held.held is not None and held.reply is None
    plain = decide(facts(), RCPT, None, res("mailfrom", "fail"), BASE)
    assert held.held.reply == plain.reply and held.held.domain == "example.com"
    ok, shown = rescue(held.held, [DKIMResult("fail", "example.com", "s1", "bad"),
                                   DKIMResult("pass", "news.example.com", "s2")], _org, s)
    assert ok.action == ACCEPT and "rescued by DKIM d=news.example.com" in ok.reason
    assert [d.domain for d in shown] == ["news.example.com"]
    no, shown = rescue(held.held, [DKIMResult("pass", "other.test", "s")], _org, s)
    assert (no.action, no.reply) == (REJECT, plain.reply) and shown == ()
    later, _ = rescue(held.held, [DKIMResult("temperror", "example.com", "s", "timeout")], _org, s)
    assert (later.action, later.reply.code, later.reply.status) == (DEFER, "451", "4.7.24")


def test_a_helo_refusal_is_rescued_by_the_helo_names_organization():
    from spfmilter.core.decision import rescue
    from spfmilter.core.values import DKIMResult

    s = settings(DKIM_Rescue="yes")
    held = decide(facts(helo="out.mail.example.net"), RCPT,
                  res("helo", "fail", "postmaster@out.mail.example.net"), res("mailfrom", "pass"), s)
    assert held.held.identity == "helo" and held.held.domain == "out.mail.example.net"
    ok, _ = rescue(held.held, [DKIMResult("pass", "example.net", "s")], _org, s)
    assert ok.action == ACCEPT
    no, _ = rescue(held.held, [DKIMResult("pass", "example.com", "s")], _org, s)
    assert no.action == REJECT and "HELO" in no.reply.text


def test_with_dkim_rescue_a_defer_beside_a_refusal_defers_at_rcpt():
    s = settings(DKIM_Rescue="yes", TempError_Defer="yes")
    d = decide(facts(), RCPT, res("helo", "temperror"), res("mailfrom", "fail"), s)
    assert d.action == DEFER and d.reply.code == "451" and d.held is None
    assert decide(facts(), RCPT, None, res("mailfrom", "fail"), settings(DKIM_Rescue="yes",
                                                                         TestOnly="0")).held is None


def test_a_pass_from_every_address_is_reported_and_decided_as_neutral_by_default():
    import dataclasses
    everything = dataclasses.replace(res("mailfrom", "pass"), authorizes_all="+all")
    neutral = reported(everything, BASE.pass_all_records)
    assert (neutral.result, neutral.authorizes_all) == ("neutral", "+all")
    assert reported(everything, cfg.PassAllPolicy.PASS) is everything
    assert reported(res("mailfrom", "pass"), BASE.pass_all_records).result == "pass"
    refused = decide(facts(), RCPT, None, neutral, settings(Mail_From_reject="Neutral"))
    assert refused.action is REJECT and "its record authorizes every address (+all)" in \
        refused.reply.text
    assert decide(facts(), RCPT, None, neutral, BASE).action is ACCEPT
    headers = dict(result_headers(facts(), None, neutral, BASE))
    assert "spf=neutral (record authorizes every address: +all)" in headers["Authentication-Results"]
    assert headers["Received-SPF"].startswith("neutral (mx.test: 198.51.100.7 is neither permitted "
                                              "nor denied by domain of user@example.com; its "
                                              "record authorizes every address: +all)")
