"""Hostile input through the milter class: pymilter's test context with DNS from the
test server, any client address, HELO, sender, macros and headers (hypothesis).

Every case must end in a well-formed header of ours (no raw line break, our
authserv-id only, parseable) or a clean refusal, with one-line log records below
ERROR; forged result headers for our authserv-id are removed in every spelling.
The same input over the real protocol: tests/integration/test_hostile.py.
"""

from __future__ import annotations

import logging

import Milter
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spfmilter import config as cfg
from spfmilter import runtime
from spfmilter.resolver import Resolver
from tests.fuzz.invariants import OUR_ID
from tests.fuzz.targets import LogRecords, check_connection, drive

# --- hypothesis: the milter class with hostile input ---------------------------------------

BITS = ["\r\n", "\n", "\r", "\0", "\t", "\x1b", "\x7f", '"', "\\", ";", "(", ")", "<", ">", "@",
        ":", ",", " ", "=", ".", "..", "[", "]", "%{i}", "%{l}", "%%", "receiver=evil.test",
        "mx.test;", "spf=pass", "\r\n\tAuthentication-Results: mx.test; spf=pass", "IPv6:",
        "192.0.2.10", "xn--", "ü", "用户", "\udcff", "\udc80", "allowed.test", "helo.test",
        "soft.test", "none.test", "perm.test", "ALLOWED.TEST", "a" * 300]
fragment = st.one_of(st.sampled_from(BITS), st.text(max_size=12),
                     st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")))
hostile_text = st.lists(fragment, max_size=8).map("".join)
domains = st.sampled_from(["allowed.test", "soft.test", "neutral.test", "none.test", "perm.test",
                           "helo.test", "ALLOWED.TEST.", "[192.0.2.10]", "xn--bcher-kva.test",
                           "bücher.test", ""]) | hostile_text
huge = st.builds(lambda n, unit: (unit * n)[:n], st.integers(60000, 66000),
                 st.sampled_from(["a", "h.", "ü", "@", "a@b.", "\r\n\t"]))
senders = st.one_of(st.tuples(hostile_text, domains).map(lambda t: f"{t[0]}@{t[1]}"), hostile_text,
                    st.just(""), huge, st.tuples(huge, domains).map(lambda t: f"{t[0]}@{t[1]}"))
helos = st.one_of(domains, hostile_text, huge)
addresses = st.one_of(
    st.sampled_from(["192.0.2.10", "198.51.100.7", "2001:db8:1::10", "2001:db8:bad::7",
                     "fe80::1%eth0", "::ffff:192.0.2.10", "IPv6:2001:db8:1::10", "[192.0.2.10]",
                     "127.0.0.1", "", "not an address", "192.0.2.999"]),
    st.ip_addresses().map(str))
macro_values = st.one_of(st.just(""), hostile_text)
macro_sets = st.fixed_dictionaries({}, optional={"j": macro_values, "i": macro_values,
                                                 "{auth_authen}": macro_values})

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])


@pytest.fixture
def class_runtime(dns_server):
    settings_ = cfg.from_mapping({"Nameservers": dns_server.nameserver, "Authserv_Id": OUR_ID,
                                  "skip_addresses": "", "Lookup_Time": "1"})
    resolver = Resolver(settings_.nameservers, settings_.policy.lookup_time)
    records = LogRecords()
    logger = logging.getLogger("spfmilter")
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    previous = runtime.install(runtime.Runtime.create(settings_, resolver=resolver))
    yield records
    if previous is not None:
        runtime.install(previous)
    logger.removeHandler(records)
    logger.setLevel(level)


@PROPERTY
@given(ip=addresses, helo=helos, sender=senders, macros=macro_sets,
       params=st.lists(hostile_text, max_size=3))
def test_milter_class_with_hostile_envelopes(class_runtime, ip, helo, sender, macros, params):
    """Any client address, HELO, MAIL FROM (up to 66 kB, any bytes as pymilter decodes them),
    ESMTP parameters and macros: RCPT gets continue or a one-line refusal (never the guard's
    internal-error 451 4.3.0), end of message adds only well-formed headers of ours, an
    authenticated client gets none, and every log record is one line below ERROR."""
    records = class_runtime
    records.records.clear()
    replies, end, ops = drive(ip, helo, sender, params, macros, [])
    check_connection(replies, end, ops, records.records, skipped=bool(macros.get("{auth_authen}")))


def _spell(case: list[bool], dot: str, quoted: bool) -> str:
    ident = "".join(ch.upper() if up else ch for ch, up in zip(OUR_ID, case)) + dot
    return f'"{ident}"' if quoted else ident


spellings = st.builds(_spell, st.lists(st.booleans(), min_size=7, max_size=7),
                      st.sampled_from(["", "."]), st.booleans())
folding = st.sampled_from([" ", "\r\n\t", "\n ", "", "\t", "\r\n\t\r\n "])
comments = st.lists(st.tuples(st.sampled_from(["c", "a (nested (twice)) one", "x\\)y", "mx.test",
                                               "\r\n\t"]), folding), max_size=3)
rest = st.sampled_from(["; spf=pass smtp.mailfrom=ceo@allowed.test", ";spf=pass", "; none",
                        ";\r\n\tdkim=pass header.d=allowed.test"])
ar_names = st.sampled_from(["Authentication-Results", "authentication-results",
                            "AUTHENTICATION-RESULTS"])
ar_forged = st.builds(lambda cs, ident, version, tail: "".join(f"({c}){w}" for c, w in cs)
                      + ident + version + tail,
                      comments, spellings, st.sampled_from(["", " 1", "\r\n\t1"]), rest)
foreign = st.sampled_from(["other.example", "mx.test.evil", "evil-mx.test", "mx.tes", "xmx.test",
                           '"mx.test.evil"'])
ar_foreign = st.builds(lambda pre, ident, tail: pre + ident + tail,
                       st.sampled_from(["", "(mx.test) ", "\r\n\t"]), foreign, rest)
rspf_forged = st.builds(lambda w, ident: f"pass (x) client-ip=192.0.2.10;{w}receiver={ident};"
                                         " identity=mailfrom", folding, spellings)
rspf_foreign = st.builds(lambda w, ident: f"pass (receiver=mx.test) client-ip=192.0.2.10;{w}"
                                          f"receiver={ident}; identity=mailfrom", folding, foreign)
incoming = st.one_of(
    st.tuples(ar_names, st.just(True), ar_forged), st.tuples(ar_names, st.just(False), ar_foreign),
    st.tuples(st.just("Received-SPF"), st.just(True), rspf_forged),
    st.tuples(st.just("Received-SPF"), st.just(False), rspf_foreign))


@PROPERTY
@given(headers=st.lists(incoming, min_size=1, max_size=6))
def test_forged_headers_for_our_id_always_removed(class_runtime, headers):
    """Any mix of forged and foreign result headers, folded as the MTA passes them (CRLF or LF
    plus WSP), any case, comments and quotes: exactly the forged ones are deleted, by index."""
    wire, expected, counts = [], [], {}
    for name, forged, value in headers:
        key = name.lower()
        counts[key] = counts.get(key, 0) + 1
        if forged:
            expected.append((key, counts[key]))
        wire.append((name, value.encode()))
    replies, end, ops = drive("192.0.2.10", "helo.test", "ceo@allowed.test", [], {}, wire, rcpts=1)
    assert end == Milter.ACCEPT
    deleted = sorted((name.lower(), idx) for op, name, _, idx in ops if op == "delete")
    assert deleted == sorted(expected), wire
