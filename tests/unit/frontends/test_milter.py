"""The milter class through pymilter's test context (no MTA), with DNS from the test server."""

import Milter
import pytest

from spfmilter import config as cfg
from spfmilter import runtime
from spfmilter.frontends.check import check
from spfmilter.frontends.milter import SPFMilter, factory_installed
from spfmilter.resolver import Resolver
from tests.kit import DATA
from tests.kit.testctx import RecordingCtx


@pytest.fixture
def settings(dns_server):
    return cfg.from_mapping({"Nameservers": dns_server.nameserver, "Authserv_Id": "mx.test",
                             "skip_addresses": "127.0.0.0/8", "Lookup_Time": "2"})


@pytest.fixture
def ctx(settings):
    """A TestCtx connected to a fresh SPFMilter, like one SMTP connection."""
    previous = runtime.install(runtime.Runtime.create(settings))
    with factory_installed(SPFMilter):
        yield RecordingCtx()
    if previous is not None:
        runtime.install(previous)


def feed(ctx, path, sender, *rcpts):
    ctx.header_ops.clear()
    with open(path, "rb") as fp:
        return ctx._feedFile(fp, sender, *rcpts)


def test_pass_adds_headers_at_the_top(settings):
    out = check(settings, Resolver(settings.nameservers, 2), ip="192.0.2.10", helo="helo.test",
               sender="user@allowed.test", recipients=["rcpt@mx.test"])
    assert out.replies == [("rcpt@mx.test", "continue", "")]
    assert out.end == "accept"
    assert all(op == "insert" and idx == 0 for op, _, _, idx in out.header_ops)
    top = [n for _, n, _, _ in reversed(out.header_ops)]
    assert top == ["Authentication-Results", "Received-SPF", "Received-SPF"]
    rendered = out.render()
    assert "MAIL FROM result: pass (user@allowed.test)" in rendered
    # the MAIL FROM clause last: SpamAssassin reads the last spf= of the field
    assert ("Authentication-Results: mx.test; spf=pass smtp.helo=helo.test; "
            "spf=pass smtp.mailfrom=allowed.test") in rendered


def test_fail_is_refused_at_rcpt_with_the_domains_explanation(settings):
    out = check(settings, Resolver(settings.nameservers, 2), ip="198.51.100.7", helo="unknown.test",
               sender="user@allowed.test", recipients=["a@mx.test", "b@mx.test"])
    assert [r[1] for r in out.replies] == ["reject", "reject"]
    assert out.replies[0][2].startswith("550 5.7.23 ")
    assert "198.51.100.7 is not one of allowed.test's designated mail servers" in out.replies[0][2]
    assert out.end is None


def test_checks_run_once_per_message_not_per_recipient(settings, dns_server):
    dns_server.clear_queries()
    check(settings, Resolver(settings.nameservers, 2), ip="192.0.2.10", helo="helo.test",
         sender="user@soft.test", recipients=[f"r{i}@mx.test" for i in range(5)])
    assert dns_server.query_count("soft.test", "TXT") == 1


def test_several_messages_on_one_connection_with_rset(ctx):
    assert ctx._connect(host="client", helo="helo.test", ip="192.0.2.10") == Milter.CONTINUE
    assert feed(ctx, DATA / "plain.eml", "user@allowed.test", "rcpt@mx.test") == Milter.ACCEPT
    first = [v for _, n, v, _ in ctx.header_ops if n == "Received-SPF" and "identity=mailfrom" in v]
    assert first and first[0].startswith("pass ")
    # An aborted transaction (RSET) leaves nothing behind for the next one.
    ctx._envfrom("<user@neutral.test>")
    ctx._priv.abort()
    assert feed(ctx, DATA / "plain.eml", "user@neutral.test", "rcpt@mx.test") == Milter.ACCEPT
    second = [v for _, n, v, _ in ctx.header_ops if n == "Received-SPF" and "identity=mailfrom" in v]
    assert second[0].startswith("neutral ") and "user@neutral.test" in second[0]
    assert feed(ctx, DATA / "plain.eml", "user@plain.test", "rcpt@mx.test") == Milter.ACCEPT
    ctx._close()


def test_forged_results_with_our_id_are_removed(ctx):
    ctx._connect(host="client", helo="helo.test", ip="192.0.2.10")
    assert feed(ctx, DATA / "forged-ar.eml", "ceo@allowed.test", "staff@mx.test") == Milter.ACCEPT
    deleted = [(n, i) for op, n, _, i in ctx.header_ops if op == "delete"]
    assert sorted(deleted) == [("Authentication-Results", 1), ("Authentication-Results", 2),
                               ("Received-SPF", 1)]
    # deletions come before our insertions, highest index first
    ops = [op for op, *_ in ctx.header_ops]
    assert ops.index("insert") > max(i for i, op in enumerate(ops) if op == "delete")
    ctx._close()


def test_connection_without_helo(ctx):
    ctx._connect(host="client", helo="", ip="192.0.2.10")
    ctx._priv.connection.hello("")  # TestCtx always sends HELO; make it as if none came
    assert feed(ctx, DATA / "plain.eml", "user@allowed.test", "rcpt@mx.test") == Milter.ACCEPT
    mailfrom = [v for _, n, v, _ in ctx.header_ops if n == "Received-SPF"]
    assert len(mailfrom) == 1 and mailfrom[0].startswith("pass ") and "helo=" not in mailfrom[0]
    ctx._close()


def test_null_sender_is_checked_on_helo(settings):
    out = check(settings, Resolver(settings.nameservers, 2), ip="198.51.100.7", helo="badhelo.test",
               sender="", recipients=["rcpt@mx.test"])
    assert out.replies[0][1] == "reject" and "postmaster@badhelo.test" in out.replies[0][2]
    out = check(settings, Resolver(settings.nameservers, 2), ip="192.0.2.10", helo="helo.test",
               sender="<>", recipients=["rcpt@mx.test"])
    assert out.end == "accept"
    headers = [v for _, n, v, _ in out.header_ops if n == "Received-SPF"]
    assert any('envelope-from="postmaster@helo.test"' in v and "identity=mailfrom" in v
               for v in headers)


def test_authenticated_and_skipped_clients_are_never_refused(settings):
    r = Resolver(settings.nameservers, 2)
    out = check(settings, r, ip="198.51.100.7", helo="badhelo.test", sender="user@allowed.test",
               recipients=["rcpt@mx.test"], auth_user="alice")
    assert out.replies[0][1] == "continue" and out.end == "accept"
    assert not [op for op in out.header_ops if op[0] == "insert"]
    out = check(settings, r, ip="127.0.0.5", helo="badhelo.test", sender="user@allowed.test",
               recipients=["rcpt@mx.test"])
    assert out.replies[0][1] == "continue" and "skipped (skip_addresses)" in out.render()


def test_ipv6_and_v4_mapped_clients(settings):
    r = Resolver(settings.nameservers, 2)
    out = check(settings, r, ip="2001:db8:1::10", helo="helo.test", sender="user@allowed.test",
               recipients=["rcpt@mx.test"])
    assert out.end == "accept" and "client-ip=\"2001:db8:1::10\"" in out.render()
    out = check(settings, r, ip="2001:db8:bad::7", helo="x.test", sender="user@allowed.test",
               recipients=["rcpt@mx.test"])
    assert out.replies[0][1] == "reject"
    out = check(settings, r, ip="::ffff:192.0.2.10", helo="helo.test", sender="user@plain.test",
               recipients=["rcpt@mx.test"])
    assert out.end == "accept" and "client-ip=192.0.2.10;" in out.render()


def test_fault_in_spfmilter_tempfails(settings, monkeypatch):
    from spfmilter.checks import spf as spf_check

    def broken(*a, **kw):
        raise RuntimeError("boom")
    monkeypatch.setattr(spf_check, "evaluate", broken)
    out = check(settings, Resolver(settings.nameservers, 2), ip="192.0.2.10", helo="helo.test",
               sender="user@allowed.test", recipients=["rcpt@mx.test"])
    assert out.replies == [("rcpt@mx.test", "tempfail", "451 4.3.0 spfmilter: internal error, try again later")]
