"""The summary model shared by report and replay: bounded tables, forwarders, its JSON."""

from __future__ import annotations

import json
import re

from spfmilter import summary as summary_module
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
