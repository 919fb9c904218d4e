"""Operations: metrics endpoint, `check --trace`, local policy, and migration from policyd-spf."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spfmilter import config as cfg
from tests.kit import ROOT
from tests.kit.milterclient import MilterSession
from tests.kit.net import free_port
from tests.kit.net import scrape_metrics as scrape

pytestmark = pytest.mark.e2e


def test_metrics_endpoint_counts_what_happened(spfmilter):
    port = free_port()
    milter = spfmilter(fresh=True, Metrics=f"127.0.0.1:{port}")
    with MilterSession(milter.socket_path) as s:
        s.connect("192.0.2.10")
        s.helo("helo.test")
        s.transaction("user@allowed.test", ["a@mx.test"])
        s.transaction("user@allowed.test", ["a@mx.test"])
        live = scrape(port)
        assert live["spfmilter_connections_in_flight"] == 1
    with MilterSession(milter.socket_path) as s:
        s.connect("198.51.100.7")
        s.helo("unknown.test")
        s.transaction("user@allowed.test", ["a@mx.test", "b@mx.test"])
    m = scrape(port)
    assert m["spfmilter_transactions_total"] == 3
    assert m['spfmilter_spf_results_total{identity="mailfrom",result="pass"}'] == 2
    assert m['spfmilter_spf_results_total{identity="mailfrom",result="fail"}'] == 1
    assert m['spfmilter_actions_total{action="accept"}'] == 2
    assert m['spfmilter_actions_total{action="reject"}'] == 2
    assert m["spfmilter_decision_seconds_count"] == 3
    # the second message of the first connection was answered from the cache
    assert m["spfmilter_dns_cache_hits_total"] >= 1
    assert m["spfmilter_dns_queries_total"] >= 3
    assert m["spfmilter_dns_timeouts_total"] == 0


def test_check_trace_explains_a_rejection(tmp_path, dns_server):
    conf = tmp_path / "c.conf"
    conf.write_text(f"Nameservers = {dns_server.nameserver}\nAuthserv_Id = mx.test\n")
    res = subprocess.run([sys.executable, "-m", "spfmilter", "check", "-c", str(conf), "--trace",
                          "--ip", "198.51.100.7", "--helo", "x.test", "--from", "ceo@allowed.test"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    out = res.stdout
    assert "Trace:" in out
    assert "DNS allowed.test TXT: v=spf1 ip4:192.0.2.0/24" in out
    assert "DNS explain.allowed.test TXT: %{i} is not one of" in out
    assert re.search(r"MAILFROM ceo@allowed.test: fail \(mechanism -all\); 0 of 10 DNS-querying "
                     r"terms, 0 of 2 void lookups", out)


def test_local_rules_and_best_guess(spfmilter):
    milter = spfmilter(Local_Rules="ip4:203.0.113.0/24", Best_Guess="v=spf1 a/24 mx/24 -all")
    with MilterSession(milter.socket_path) as s:
        s.connect("203.0.113.9")                    # a trusted forwarder, by local policy
        s.helo("fwd.example")
        replies, eom = s.transaction("user@allowed.test", ["a@mx.test"])
        assert replies[0].kind == "continue"
        spf = [v for n, v in eom.headers_on_top() if n == "Received-SPF" and "identity=mailfrom" in v][0]
        assert spf.startswith("pass (mx.test: 203.0.113.9 is permitted for user@allowed.test by local policy")
    with MilterSession(milter.socket_path) as s:
        s.connect("198.51.100.7")                   # none.test publishes no record: guess, never reject
        s.helo("x.test")
        replies, eom = s.transaction("user@none.test", ["a@mx.test"])
        assert replies[0].kind == "continue"
        ar = [v for n, v in eom.headers_on_top() if n == "Authentication-Results"][0]
        assert "spf=none (best guess record gives fail) smtp.mailfrom=none.test" in ar


# --- migration ---------------------------------------------------------------------------

#: spf-engine 3.1.0's sample configurations, unpacked by scripts/install-interop.sh
#: (`make interop-deps`): the tests fetch nothing from the network.
SPF_ENGINE = Path(os.environ.get("SPFMILTER_LAB_PREFIX", "/opt/spfmilter-lab")) / "spf-engine-3.1.0"


@pytest.fixture(scope="module")
def spf_engine_samples() -> Path:
    """The sample configurations shipped in spf-engine's source distribution."""
    target = SPF_ENGINE / "data" / "etc"
    if not (target / "pyspf-milter" / "pyspf-milter.conf").is_file():
        pytest.skip(f"spf-engine's samples are not in {SPF_ENGINE}: run `make interop-deps`")
    return target


def test_pyspf_milter_and_policyd_spf_samples_are_accepted(spf_engine_samples):
    for sample in ("pyspf-milter/pyspf-milter.conf", "python-policyd-spf/policyd-spf.conf",
                   "python-policyd-spf/policyd-spf.conf.commented"):
        s = cfg.parse(spf_engine_samples / sample)
        assert s.policy.helo_reject is cfg.HeloPolicy.FAIL and s.policy.mail_from_reject is cfg.MailFromPolicy.FAIL
    milter_conf = cfg.parse(spf_engine_samples / "pyspf-milter/pyspf-milter.conf")
    assert str(milter_conf.socket) == "inet:8893@localhost" and milter_conf.user_id == "pyspf-milter"


def test_every_key_of_the_commented_sample_is_honoured_or_refused_with_a_hint(spf_engine_samples):
    text = (spf_engine_samples / "python-policyd-spf/policyd-spf.conf.commented").read_text()
    keys = sorted(set(re.findall(r"^#\s*([A-Za-z_]+)\s*=", text, re.M)))
    assert len(keys) > 15
    for key in keys:
        try:
            cfg.parse_text(f"{key} = {_sample_value(key)}\n", "sample")
        except cfg.ConfigError as exc:
            assert "not supported by spfmilter: " in str(exc), (key, str(exc))


def _sample_value(key: str) -> str:
    return {"HELO_reject": "SPF_Not_Pass", "Mail_From_reject": "Softfail", "Header_Type": "AR",
            "Lookup_Time": "20", "Whitelist_Lookup_Time": "10", "Void_Limit": "2",
            "Whitelist": "192.0.2.0/24", "Domain_Whitelist": "pobox.com",
            "HELO_Whitelist": "relay.example", "Authserv_Id": "HOSTNAME",
            "Reason_Message": "Message {rejectdefer} due to: {spf}. Please see {url}",
            "Reject_Not_Pass_Domains": "gmail.com", "skip_addresses": "127.0.0.0/8",
            }.get(key, "True")
