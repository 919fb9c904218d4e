"""The summary model shared by report and replay: bounded tables, forwarders, its JSON."""

from __future__ import annotations

import json
import re

from spfmilter import replay, report
from spfmilter import summary as summary_module
from spfmilter.log import kv
from spfmilter.summary import Record, Summary, Table, org_domain


def test_a_full_table_folds_its_least_counted_keys_and_keeps_the_total_exact():
    table = Table(limit=10)
    for i in range(1000):
        table.add("busy")
        table.add(f"once-{i}")
    assert len(table.counts) <= 10 and table.folded
    assert table.total() == 2000
    assert table.top(1) == [("busy", 1000)]
    shown = table.to_json(show=3)
    assert list(shown["top"])[0] == "busy"                          # type: ignore[call-overload]
    assert sum(shown["top"].values()) + shown["other"] == 2000      # type: ignore[attr-defined]


def test_a_summary_of_many_distinct_senders_stays_bounded():
    s = Summary(limit=50)
    for i in range(5000):
        s.add(Record(action="reject", mailfrom_result="fail", sender_domain=f"d{i}.example",
                     client_ip=f"10.{i // 250}.{i % 250}.1"))
    assert all(len(t.counts) <= 50 for t in s._tables())
    assert len(s._clients) <= 50
    assert s.refused[0].total() == s.refused[1].total() == 5000
    assert "lower bounds" in s.render()


def test_a_client_failing_for_unrelated_domains_is_a_forwarder_with_its_exempting_lines():
    s = Summary()
    for domain in ("bank.example", "shop.example.co.uk", "news.example.org"):
        s.add(Record(action="reject", mailfrom_result="fail", helo_result="pass",
                     helo="Fwd.Example.NET.", sender_domain=domain, client_ip="198.51.100.7"))
    for domain in ("a.corp.example", "b.corp.example", "mail.corp.example"):  # one organization
        s.add(Record(action="reject", mailfrom_result="softfail", sender_domain=domain,
                     client_ip="203.0.113.9"))
    [forwarder] = s.forwarders()
    assert forwarder["client_ip"] == "198.51.100.7" and forwarder["failures"] == 3
    assert forwarder["exempt"] == ["Whitelist = 198.51.100.7",
                                   "Domain_Whitelist = fwd.example.net"]
    assert "      exempt with: Whitelist = 198.51.100.7" in s.render()


def test_org_domain_rule_of_thumb():
    assert org_domain("a.b.example.com") == "example.com"
    assert org_domain("mail.example.co.uk") == "example.co.uk"
    assert org_domain("example") == "example"


def test_json_keys_are_the_documented_ones():
    s = Summary()
    s.add(Record(action="accept", helo_result="pass", mailfrom_result="pass",
                 sender_domain="example.com", client_ip="192.0.2.1"))
    out = s.to_json()
    documented = re.findall(r"^``(\w+)``$", summary_module.__doc__ or "", re.M)
    assert list(out) == documented
    assert json.loads(s.json_text()) == {"summary": out}
    assert out["results"] == {"helo": {"pass": 1}, "mailfrom": {"pass": 1}}


def test_a_helo_that_is_no_domain_name_is_not_offered_for_domain_whitelist():
    s = Summary()
    for domain in ("one.example", "two.example", "three.example"):
        s.add(Record(action="reject", mailfrom_result="fail", helo_result="pass",
                     helo="[192.0.2.1]", sender_domain=domain, client_ip="192.0.2.1"))
    assert s.forwarders()[0]["exempt"] == ["Whitelist = 192.0.2.1"]


# --- replay's records into the same model ---------------------------------------------

def replayed(action="accept", client="192.0.2.1", helo="h.test", sender="u@a.test",
             helo_result="pass", mailfrom_result="pass", rescued=False, reason=""):
    """A record as ``spfmilter replay`` prints it."""
    return {"source": "box:1", "message_id": None, "action": action, "client_ip": client,
            "helo": helo, "envelope_from": sender, "envelope_to": None,
            "helo_result": helo_result, "mailfrom_result": mailfrom_result, "reply": "",
            "rescued": rescued, "reason": reason}


def replay_summary(*records):
    s = replay.new_summary()
    for r in records:
        s.add(replay.summary_record(r))
    return s


def test_replay_records_count_per_action_result_and_refusal():
    j = replay_summary(replayed(), replayed(action="reject", mailfrom_result="fail"),
                       replayed(action="not-replayable", reason="no Received header",
                                client=None, helo=None, sender=None, helo_result=None,
                                mailfrom_result=None)).to_json()
    assert j["decisions"] == 3
    assert j["actions"] == {"accept": 1, "not-replayable": 1, "reject": 1}
    assert j["results"]["mailfrom"] == {"fail": 1, "pass": 1}
    assert j["not_replayable"] == {"count": 1, "by_reason": {
        "top": {"no Received header": 1}, "other": 0, "folded": False}}
    assert j["refused"]["count"] == 1
    assert j["refused"]["by_sender_domain"]["top"] == {"a.test": 1}
    assert j["refused"]["by_client"]["top"] == {"192.0.2.1": 1}
    assert j["note"] == replay.NOTE


def test_replay_forwarders_use_the_public_suffix_list_and_two_domains():
    fwd = dict(client="198.51.100.7", helo="fwd.test", mailfrom_result="fail", action="reject")
    s = replay_summary(replayed(sender="u@a.example.co.uk", **fwd),
                       replayed(sender="u@mail.a.example.co.uk", **fwd),
                       replayed(sender="v@b.test", **fwd),
                       replayed(sender="w@c.test", client="203.0.113.5", mailfrom_result="fail"),
                       replayed(sender="w@sub.c.test", client="203.0.113.5",
                                mailfrom_result="softfail"))
    [f] = s.to_json()["forwarders"]
    assert f["client_ip"] == "198.51.100.7" and f["failures"] == 3
    assert f["domains"] == ["b.test", "example.co.uk"]
    assert f["exempt"] == ["Whitelist = 198.51.100.7", "Domain_Whitelist = fwd.test"]
    assert "exempt with: Whitelist = 198.51.100.7" in s.render()


def test_replay_rescues_and_temperrors_and_the_note_in_the_text():
    s = replay_summary(replayed(mailfrom_result="fail", rescued=True, sender="u@bank.test"),
                       replayed(mailfrom_result="temperror", sender="u@slow.test",
                                action="defer"),
                       replayed(helo_result="temperror", mailfrom_result=None, sender="",
                                helo="h.slow.test"))
    j = s.to_json()
    assert j["dkim"]["rescued"] == 1 and j["dkim"]["by_domain"]["top"] == {"bank.test": 1}
    assert j["temperror"]["count"] == 2
    assert j["temperror"]["by_name"]["top"] == {"slow.test": 1, "h.slow.test": 1}
    assert j["deferred"]["by_sender_domain"]["top"] == {"slow.test": 1}
    text = s.render()
    assert "DKIM_Rescue: 1 rescued" in text and "SPF temperrors: 2" in text
    assert f"Note: {replay.NOTE}." in text


def test_replay_and_report_summaries_of_the_same_decisions_have_the_same_json_keys(tmp_path):
    lines = [kv(action="reject", reason="mailfrom fail", identity="mailfrom", result="fail",
                helo_result="pass", client_ip="198.51.100.7", helo="fwd.test",
                envelope_from=f"u@{d}") for d in ("a.test", "b.test", "c.test")]
    log = tmp_path / "mail.log"
    log.write_text("".join(f"Dec  5 05:14:52 mx spfmilter[1]: {line}\n" for line in lines))
    from_log = Summary()
    report.run([str(log)], from_log)
    from_store = replay_summary(*(replayed(action="reject", client="198.51.100.7",
                                           helo="fwd.test", sender=f"u@{d}",
                                           mailfrom_result="fail")
                                  for d in ("a.test", "b.test", "c.test")))
    a, b = from_log.to_json(), from_store.to_json()
    assert a["decisions"] == b["decisions"] == 3

    def keys(value: object, at: str = "") -> set[str]:
        if isinstance(value, dict) and at not in _DATA:
            return {f"{at}.{k}" for k in value} | {x for k, v in value.items()
                                                  for x in keys(v, f"{at}.{k}")}
        if isinstance(value, list):
            return {x for v in value for x in keys(v, f"{at}[]")}
        return set()
    assert keys(a) == keys(b)
    assert ".forwarders[].exempt" in keys(b) and ".note" in keys(a)


# mappings whose keys are data (actions, results, table keys), not the JSON's shape
_DATA = {".actions", ".results.helo", ".results.mailfrom", ".would_refuse.by_action"} | {
    f".{k}.{t}.top" for k, ts in {
        "not_checked": [""], "refused": ["by_sender_domain", "by_client"],
        "deferred": ["by_sender_domain", "by_client"],
        "would_refuse": ["by_sender_domain", "by_client"], "dkim": ["by_domain"],
        "relay_hops": ["by_relay"], "temperror": ["by_name"], "dns_failures": ["by_name"],
        "internal_errors": ["by_error"], "not_replayable": ["by_reason"]}.items()
    for t in ts} | {".not_checked.top"}
