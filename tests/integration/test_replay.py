"""``spfmilter replay`` as an administrator runs it: the real command on generated mail
stores, its DNS from the tests' DNS server, DKIM_Rescue on real signatures.

The store holds what a site's mail looks like: mail straight from the sender's
servers, a forwarder (198.51.100.7, authorized by fwd.test only) relaying
mail of two unrelated domains, one of the forwarded messages signed by its
sender's domain, a content filter's re-injection on loopback, IPv6, a null
sender, a HELO that imitates an address comment, a domain whose DNS never
answers, and a message without Received headers.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.kit import ROOT, dkimkeys
from tests.kit import mailstore as ms

pytestmark = pytest.mark.e2e

ZONES = {
    "bank.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "mail.bank.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "v6.bank.test": [{"TXT": "v=spf1 ip6:2001:db8::/32 -all"}],
    "other.test": [{"TXT": "v=spf1 ip4:192.0.2.128/25 -all"}],
    "fwd.test": [{"TXT": "v=spf1 ip4:198.51.100.7 -all"}],
    "sel1._domainkey.bank.test": [{"TXT": dkimkeys.key_record()}],
    "slow.test": ["TIMEOUT"],
}
FWD, FWD_HELO = "198.51.100.7", "fwd.test"


@pytest.fixture
def zones(dns_server):
    dns_server.update(ZONES)
    return dns_server


@pytest.fixture
def conf(tmp_path, zones):
    path = tmp_path / "spfmilter.conf"
    # TestOnly = 0 as an administrator has it before enforcing: replay refuses anyway
    path.write_text(f"Nameservers = {zones.nameserver}\nAuthserv_Id = mx.test\n"
                    "DKIM_Rescue = yes\nLookup_Time = 2\nTestOnly = 0\n")
    return path


def store() -> list[tuple[str, bytes]]:
    """(what the message is, the message as delivered), in store order."""
    fwd = ms.postfix(FWD, FWD_HELO)
    bank = ms.simple(msgid="<signed@bank.test>")
    return [
        ("direct", ms.delivered(ms.simple(msgid="<direct@bank.test>"),
                                [ms.postfix("192.0.2.1", "mail.bank.test")])),
        ("forwarded", ms.delivered(ms.simple(msgid="<fwd@bank.test>"), [fwd])),
        ("rescued", ms.delivered(dkimkeys.sign(bank, "bank.test"), [fwd])),
        ("other", ms.delivered(ms.simple("u@other.test", msgid="<o@other.test>"), [fwd],
                               return_path="<u@other.test>")),
        ("filtered-v6-null", ms.delivered(ms.simple(msgid="<v6@bank.test>"),
                                          [ms.reinjection(), ms.exim("2001:db8::5", "v6.bank.test")],
                                          return_path="<>")),
        ("hostile-helo", ms.delivered(ms.simple(msgid="<h@bank.test>"),
                                      [ms.postfix("203.0.113.66", "x (y [192.0.2.10])")])),
        ("slow", ms.delivered(ms.simple("u@slow.test", msgid="<s@slow.test>"),
                              [ms.sendmail("192.0.2.9", "mail.bank.test")],
                              return_path="<u@slow.test>")),
        ("no-received", ms.delivered(ms.simple(msgid="<n@bank.test>"), [])),
    ]


def replay(conf, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spfmilter", "replay", "-c", str(conf), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_json_records_and_summary_over_two_processes(tmp_path, conf):
    messages = store()
    box = ms.write_mbox(tmp_path / "box", [raw for _, raw in messages])
    res = replay(conf, "--json", "--jobs", "2", str(box))
    assert res.returncode == 0, res.stderr
    *lines, last = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["source"] for r in lines] == [f"{box}:{i}" for i in range(1, len(messages) + 1)]
    got = {name: r for (name, _), r in zip(messages, lines, strict=True)}
    keys = {"source", "message_id", "client_ip", "helo", "envelope_from", "helo_result",
            "mailfrom_result", "action", "reply", "rescued", "reason"}
    assert all(keys <= set(r) for r in lines)

    assert got["direct"]["action"] == "accept" and got["direct"]["mailfrom_result"] == "pass"
    assert got["direct"]["message_id"] == "<direct@bank.test>"
    f = got["forwarded"]
    assert (f["client_ip"], f["helo"], f["envelope_from"]) == (FWD, FWD_HELO, "user@bank.test")
    assert (f["helo_result"], f["mailfrom_result"], f["action"]) == ("pass", "fail", "reject")
    assert f["reply"].startswith("550 5.7.23 ") and not f["rescued"]
    r = got["rescued"]
    assert (r["mailfrom_result"], r["action"], r["rescued"]) == ("fail", "accept", True)
    assert r["reason"] == "mailfrom fail, rescued by DKIM d=bank.test"
    v6 = got["filtered-v6-null"]
    assert (v6["client_ip"], v6["helo"], v6["envelope_from"]) == ("2001:db8::5", "v6.bank.test", "")
    assert (v6["helo_result"], v6["mailfrom_result"], v6["action"]) == ("pass", "pass", "accept")
    h = got["hostile-helo"]   # read as 192.0.2.10 the HELO's comment would pass
    assert (h["client_ip"], h["mailfrom_result"], h["action"]) == ("203.0.113.66", "fail", "reject")
    assert got["slow"]["mailfrom_result"] == "temperror" and got["slow"]["action"] == "accept"
    n = got["no-received"]
    assert (n["action"], n["reason"], n["client_ip"]) == ("not-replayable", "no Received header", None)

    s = last["summary"]
    assert s["decisions"] == len(messages)
    assert s["actions"] == {"accept": 4, "reject": 3, "not-replayable": 1}
    assert s["refused"]["count"] == 3
    assert s["refused"]["by_sender_domain"]["top"] == {"bank.test": 2, "other.test": 1}
    assert s["refused"]["by_client"]["top"] == {FWD: 2, "203.0.113.66": 1}
    [fw] = s["forwarders"]
    assert fw["client_ip"] == FWD and fw["domains"] == ["bank.test", "other.test"]
    assert fw["exempt"] == [f"Whitelist = {FWD}", "Domain_Whitelist = fwd.test"]
    assert s["dkim"]["rescued"] == 1 and s["dkim"]["by_domain"]["top"] == {"bank.test": 1}
    assert s["temperror"]["count"] == 1 and s["temperror"]["by_name"]["top"] == {"slow.test": 1}
    assert s["not_replayable"]["by_reason"]["top"] == {"no Received header": 1}
    assert "today's DNS" in s["note"]


def test_the_exempting_line_does_exempt_the_forwarder(tmp_path, conf):
    """The Whitelist line the summary prints, added to the file, turns its refusals into
    accepts: it is a line spfmilter takes, for the client it names."""
    messages = [raw for name, raw in store() if name in ("forwarded", "other")]
    box = ms.write_mbox(tmp_path / "box", messages)
    first = json.loads(replay(conf, "--json", "--jobs", "1", str(box)).stdout.splitlines()[-1])
    [fw] = first["summary"]["forwarders"]
    conf.write_text(conf.read_text() + fw["exempt"][0] + "\n")
    res = replay(conf, "--json", "--jobs", "1", str(box))
    assert res.returncode == 0, res.stderr
    after = json.loads(res.stdout.splitlines()[-1])["summary"]
    assert after["actions"] == {"accept": 2}


def test_text_output_from_gzip_mbox_maildir_and_eml(tmp_path, conf):
    messages = store()
    chosen = [raw for name, raw in messages if name in ("direct", "forwarded", "rescued")]
    gz = ms.write_mbox(tmp_path / "box.gz", chosen, gzipped=True)
    maildir = ms.write_maildir(tmp_path / "Maildir", chosen)
    eml = tmp_path / "one.eml"
    eml.write_bytes(chosen[1])
    res = replay(conf, "--jobs", "2", str(gz), str(maildir), str(eml), str(tmp_path / "missing"))
    assert res.returncode == 1     # the missing path; the others are replayed all the same
    assert res.stderr.count("\n") == 1 and "missing" in res.stderr
    out = res.stdout.splitlines()
    per_message = [line for line in out if line.startswith("source=")]
    assert len(per_message) == 7
    assert per_message[0].startswith(f"source={gz}:1 client=192.0.2.1 helo=mail.bank.test "
                                      "from=<user@bank.test> helo_result=pass "
                                      "mailfrom_result=pass action=accept")
    assert sum("action=reject reply=\"550 5.7.23 " in line for line in per_message) == 3
    assert sum("rescued=yes" in line for line in per_message) == 2   # gzip, Maildir
    text = "\n".join(out)
    assert "Refused (reject): 3" in text and "DKIM_Rescue: 2 rescued" in text
    assert "results reflect today's DNS" in text


def test_receiver_names_decide_whose_header_is_read(tmp_path, conf):
    raw = ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "mail.bank.test", by="mx2.test")])
    eml = tmp_path / "m.eml"
    eml.write_bytes(raw)
    res = replay(conf, "--json", str(eml))
    [record] = [json.loads(line) for line in res.stdout.splitlines()][:1]
    assert record["action"] == "not-replayable" and "written by mx2.test" in record["reason"]
    res = replay(conf, "--json", "--receiver", "mx1.test", "--receiver", "mx2.test", str(eml))
    record = json.loads(res.stdout.splitlines()[0])
    assert record["action"] == "accept" and record["client_ip"] == "192.0.2.1"


def test_hostile_messages_each_get_a_record_and_never_end_the_run(tmp_path, conf):
    good = ms.delivered(ms.simple(msgid="<ok@bank.test>"), [ms.postfix("192.0.2.1", "mail.bank.test")])
    hostile = [
        b"\x00\xff\xfe garbage without headers\n\n\x00",
        ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "h\xe9\x00.test")]),
        ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "mail.bank.test")],
                     return_path="<a b@bank.test>"),
        ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "x" * 100_000)]),
        ms.delivered(ms.simple(), [ms.postfix("203.0.113.66", "x by mx.test (y [192.0.2.1])",
                                              by="evil.test")]),
        ms.delivered(ms.simple(body="From: nobody\r\n" * 5000), [ms.postfix("192.0.2.1", "h.test")],
                     return_path="<" + "a" * 5000 + "@bank.test>"),
        good,
    ]
    box = ms.write_mbox(tmp_path / "box", hostile)
    res = replay(conf, "--json", "--jobs", "2", str(box))
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()[:-1]]
    assert len(records) == len(hostile)
    assert [r["action"] == "not-replayable" for r in records[:5]] == [True, False, True, True, True]
    # a HELO with a NUL and a non-ASCII letter is what the client sent: replayed as sent
    assert records[1]["helo"] == "h\xe9\x00.test" and records[1]["client_ip"] == "192.0.2.1"
    assert records[1]["action"] in ("accept", "reject") and records[1]["mailfrom_result"] == "pass"
    assert "written by evil.test" in records[4]["reason"]
    assert records[5]["action"] == "not-replayable"    # a Return-Path longer than any address
    assert records[-1]["action"] == "accept" and records[-1]["message_id"] == "<ok@bank.test>"


def test_a_hop_through_a_trusted_relay_is_replayed_for_the_host_behind_it(tmp_path, conf):
    chain = [ms.postfix("10.0.0.5", "relay.internal"),
             ms.postfix("192.0.2.1", "mail.bank.test", by="relay.internal")]
    eml = tmp_path / "relayed.eml"
    eml.write_bytes(ms.delivered(ms.simple(), chain))
    record = json.loads(replay(conf, "--json", str(eml)).stdout.splitlines()[0])
    assert (record["client_ip"], record["action"]) == ("10.0.0.5", "reject")   # the relay itself
    conf.write_text(conf.read_text() + "Trusted_Relays = 10.0.0.0/8\n")
    record = json.loads(replay(conf, "--json", str(eml)).stdout.splitlines()[0])
    assert (record["client_ip"], record["helo"], record["mailfrom_result"], record["action"]) == \
        ("192.0.2.1", "mail.bank.test", "pass", "accept")
