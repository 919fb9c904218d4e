"""DKIM_Rescue through the suite's real Postfix and Sendmail: a forward that keeps the
sender's envelope is delivered with dkim=pass; the same message unsigned is refused at
end of data with 550 5.7.23.  The MTAs pass the headers as they received them."""

from __future__ import annotations

import re

import pytest

from tests.integration.test_dkim_rescue import FORWARDER, FWD_HELO, RESCUE, ZONES
from tests.kit import dkimkeys, mta

pytestmark = pytest.mark.mta


def pytest_generate_tests(metafunc):
    mta.parametrize_labs(metafunc)


@pytest.fixture(scope="module")
def lab(request, tmp_path_factory):
    with mta.lab_without_milter(request.param, tmp_path_factory, "dkim") as running:
        yield running


@pytest.fixture
def rescuing(lab, spfmilter, dns_server):
    dns_server.update(ZONES)
    lab.mta.wait_idle()
    lab.capture.clear()
    milter = spfmilter(**RESCUE)
    lab.mta.set_milter(milter.socket_spec)
    return milter


@pytest.mark.parametrize("canon", [(b"relaxed", b"relaxed"), (b"simple", b"simple")])
def test_signed_forward_delivered_with_dkim_pass(lab, rescuing, canon):
    msg = dkimkeys.sign(mta.make_message("user@bank.test", "rcpt@example.com", subject="forwarded"),
                        "bank.test", canonicalize=canon)
    tr = lab.mta.send(FORWARDER, FWD_HELO, "user@bank.test", ["rcpt@example.com"], msg)
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = lab.capture.wait_for(1)
    ours = [re.sub(r"\s+", " ", v) for v in m.headers("Authentication-Results")
            if v.lower().startswith("mx.test;")]
    assert len(ours) == 1 and "dkim=pass header.d=bank.test header.s=sel1" in ours[0]
    assert ours[0].endswith("spf=fail smtp.mailfrom=bank.test")
    # as written in the message: "Name: value", as without DKIM_Rescue
    assert re.search(r"(?m)^Authentication-Results: mx\.test;", m.text), m.text
    assert re.search(r"(?m)^Received-SPF: fail ", m.text), m.text
    rescuing.wait_for_log(r"rescued by DKIM d=bank\.test")


def test_unsigned_forward_refused_at_end_of_data(lab, rescuing):
    msg = mta.make_message("user@bank.test", "rcpt@example.com", subject="not signed")
    tr = lab.mta.send(FORWARDER, FWD_HELO, "user@bank.test", ["rcpt@example.com"], msg)
    assert tr.rcpt("rcpt@example.com").code == 250, str(tr)      # held at RCPT
    assert tr.final and tr.final.code == 550 and tr.final.enhanced == "5.7.23", str(tr)
    assert lab.mta.queue_files() == [] and lab.capture.count() == 0
