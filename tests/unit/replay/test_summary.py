"""The summary of decision records: counts, refusals, probable forwarders and the line
that exempts them, rescues, temperrors."""

from spfmilter.replay.summary import ACTIONS, NOTE, Summary


def rec(action="accept", client="192.0.2.1", helo="h.test", sender="u@a.test", helo_result="pass",
        mailfrom_result="pass", rescued=False, reason=""):
    return {"action": action, "client_ip": client, "helo": helo, "envelope_from": sender,
            "helo_result": helo_result, "mailfrom_result": mailfrom_result, "rescued": rescued,
            "reason": reason}


def org(domain: str) -> str:
    return ".".join(domain.split(".")[-2:])


def summary(*records):
    s = Summary(org_domain=org)
    for r in records:
        s.add(r)
    return s


def test_counts_per_action_and_result():
    s = summary(rec(), rec(action="reject", mailfrom_result="fail"),
                rec(action="not-replayable", reason="no Received header"))
    j = s.to_json()
    assert j["messages"] == 3
    assert list(j["actions"]) == list(ACTIONS)
    assert j["actions"]["accept"] == 1 and j["actions"]["reject"] == 1
    assert j["mailfrom_results"] == {"pass": 1, "fail": 1}
    assert j["not_replayable"] == {"messages": 1, "by_reason": {"no Received header": 1}}
    assert j["refused"] == {"messages": 1, "by_sender_domain": {"a.test": 1},
                            "by_client": {"192.0.2.1": 1}}
    assert j["note"] == NOTE


def test_a_client_failing_for_unrelated_domains_is_a_probable_forwarder_with_its_line():
    fwd = dict(client="198.51.100.7", helo="fwd.test", mailfrom_result="fail", action="reject")
    s = summary(rec(sender="u@a.test", **fwd), rec(sender="u@mail.a.test", **fwd),
                rec(sender="v@b.test", **fwd),
                rec(sender="w@c.test", client="203.0.113.5", mailfrom_result="fail"),
                rec(sender="w@sub.c.test", client="203.0.113.5", mailfrom_result="softfail"))
    [f] = s.to_json()["probable_forwarders"]
    assert f["client_ip"] == "198.51.100.7" and f["sender_domains"] == ["a.test", "b.test"]
    assert f["messages"] == 3
    assert f["whitelist_line"] == "Whitelist = 198.51.100.7"
    assert f["domain_whitelist_line"] == "Domain_Whitelist = fwd.test"
    assert "Whitelist = 198.51.100.7" in s.render()


def test_rescues_and_temperrors():
    s = summary(rec(mailfrom_result="fail", rescued=True, sender="u@bank.test"),
                rec(mailfrom_result="temperror", sender="u@slow.test", action="defer"),
                rec(helo_result="temperror", mailfrom_result=None, sender="", helo="h.slow.test"))
    j = s.to_json()
    assert j["rescued"] == {"messages": 1, "by_sender_domain": {"bank.test": 1}}
    assert j["temperrors"] == {"messages": 2, "by_domain": {"slow.test": 1, "h.slow.test": 1}}
    assert j["mailfrom_results"]["not-checked"] == 1
    text = s.render()
    assert "Rescued by DKIM_Rescue: 1" in text and "Temperrors (DNS did not answer): 2" in text
    assert NOTE in text
