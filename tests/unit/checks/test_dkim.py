"""The pure parts of DKIM verification: the key and signature-field limits that keep a
sender's key or header from costing CPU, and the body canonicalization done here
instead of in dkimpy (it must give exactly dkimpy's bytes)."""

from __future__ import annotations

import base64
import random

import dkim
import pytest
from dkim.canonicalization import Relaxed, Simple

from spfmilter.checks import dkim as checker
from tests.kit import dkimkeys


def _record_bytes(modulus: int, exponent: int) -> bytes:
    return dkimkeys.public_key_record(modulus, exponent).encode()


def test_a_key_larger_than_4096_bits_is_refused_with_its_size():
    problem = checker.key_problem(_record_bytes(dkimkeys.odd_number(16384, 1),
                                                dkimkeys.odd_number(16384, 2)), 256)
    assert problem is not None
    assert (problem.result, problem.reason) == ("permerror", "key too large: 16384 bits (at most 4096)")


def test_key_data_too_large_to_parse_is_refused_unparsed():
    problem = checker.key_problem(_record_bytes(dkimkeys.odd_number(65536, 1), 65537), 256)
    assert problem is not None and problem.result == "permerror"
    assert problem.reason.startswith("key too large: 82") and "bytes of key data" in problem.reason


def test_a_large_exponent_is_refused_even_with_an_allowed_modulus():
    problem = checker.key_problem(_record_bytes(dkimkeys.odd_number(4096, 1),
                                                dkimkeys.odd_number(4096, 2)), 512)
    assert problem is not None
    assert (problem.result, problem.reason) == ("permerror",
                                                "key exponent of 4096 bits (at most 65537)")


def test_a_degenerate_exponent_is_refused():
    problem = checker.key_problem(_record_bytes(dkimkeys.odd_number(2048, 1), 1), 256)
    assert problem is not None and problem.reason == "key exponent 1 (at least 3)"


def test_a_key_smaller_than_1024_bits_is_refused():
    problem = checker.key_problem(_record_bytes(dkimkeys.odd_number(512, 1), 65537), 64)
    assert problem is not None
    assert (problem.result, problem.reason) == ("permerror", "key too small: 512 bits (at least 1024)")


@pytest.mark.parametrize("bits,exponent", [(1024, 65537), (4096, 65537), (4096, 3), (2048, 17)])
def test_keys_within_the_limits_are_left_to_dkimpy(bits, exponent):
    assert checker.key_problem(_record_bytes(dkimkeys.odd_number(bits, 1), exponent),
                               bits // 8) is None


def test_a_real_key_record_passes_and_a_longer_signature_fails_unverified():
    record = dkimkeys.key_record().encode()
    assert checker.key_problem(record, 256) is None
    problem = checker.key_problem(record, 300_000)
    assert problem is not None and problem.result == "fail"
    assert problem.reason == "signature of 300000 bytes for a 2048-bit key"


@pytest.mark.parametrize("record", [b"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
                                    b"v=DKIM1; k=rsa; p=", b"v=DKIM1; p=bm90IGEga2V5", b";;;==="])
def test_ed25519_and_broken_records_are_left_to_dkimpy(record):
    assert checker.key_problem(record, 64) is None


def test_a_signature_field_with_a_long_run_of_folding_blanks_is_refused():
    # dkimpy's b= pattern backtracks quadratically on such a run
    value = b" v=1; a=rsa-sha256; d=bank.test; s=sel1; b=" + b"\r\n " * 40 + b"AAAA"
    problem = checker.signature_problem(value)
    assert problem is not None and problem.result == "permerror"
    assert "more than 64 white space characters in a row" in problem.reason
    folded = b" v=1; a=rsa-sha256;\r\n\td=bank.test; s=sel1;\r\n\tb=" + b"AAAA\r\n\t" * 100
    assert checker.signature_problem(folded) is None


def test_an_oversized_signature_field_is_refused():
    problem = checker.signature_problem(b" v=1; z=" + b"x" * 9000)
    assert problem is not None and problem.reason == "DKIM-Signature field of 9008 bytes (at most 8192)"


@pytest.mark.parametrize("message", [b"A: b\r\n\r\nbody\r\n", b"A: b\n\nbody\n", b"A: b\r\n",
                                     b"\r\nbody", b"A: b\r\n c\r\n\r\n\r\nx", b"A: b\n\r\nx\r\n"])
def test_the_header_section_is_split_as_dkimpy_splits_it(message):
    parts = checker.split_message(message)
    assert parts is not None
    headers, _ = dkim.rfc822_parse(message)
    assert dkim.rfc822_parse(parts[0])[0] == headers
    assert b"".join(checker.canonical_body(parts[1], False)) == \
        Simple.canonicalize_body(dkim.rfc822_parse(message)[1])


def test_a_header_section_larger_than_the_limit_is_not_split():
    assert checker.split_message(b"X: " + b"y" * 70_000 + b"\r\n\r\nbody") is None
    assert checker.split_message(b"X: " + b"y" * 70_000) is None
    assert checker.split_message(b"X: y\r\n\r\n" + b"z" * 100_000) is not None


_ALPHABET = [b" ", b"\t", b"\r", b"\n", b"\r\n", b"a", b"b ", b"\r\n\r\n", b" \t "]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16 * 1024])
def test_canonical_body_is_dkimpys_byte_for_byte(monkeypatch, chunk):
    monkeypatch.setattr(checker, "CHUNK", chunk)
    rnd = random.Random(chunk)
    for _ in range(3000):
        body = b"".join(rnd.choice(_ALPHABET) for _ in range(rnd.randint(0, 16)))
        _, parsed = dkim.rfc822_parse(b"X: y\r\n\r\n" + body)
        for relaxed, algorithm in ((False, Simple), (True, Relaxed)):
            assert b"".join(checker.canonical_body(body, relaxed)) == \
                algorithm.canonicalize_body(parsed), (body, relaxed)


def test_a_long_run_of_blanks_is_canonicalized_in_pieces():
    # dkimpy's own trailing-blank pattern is quadratic in such a run
    body = b"start" + b" \t" * 600_000 + b"end\r\n" + b"\r\n" * 1000
    pieces = list(checker.canonical_body(body, True))
    assert b"".join(pieces) == b"start end\r\n"
    assert max(map(len, pieces)) <= checker.CHUNK


def test_the_body_check_hashes_only_l_bytes_and_reports_what_l_leaves_unsigned():
    body = checker._Body(b"Signed part.\r\n")
    message = b"From: a@bank.test\r\nSubject: s\r\n\r\nSigned part.\r\n"
    private, _ = dkimkeys.keypair()
    header = dkim.sign(message, b"sel1", b"bank.test", private, length=True,
                       canonicalize=(b"relaxed", b"relaxed"))
    sig = dkim.util.parse_tag_value(b" ".join(header.split(b":", 1)[1].split()))
    assert body.check(sig) is None                                     # l= covers it all
    appended = checker._Body(b"Signed part.\r\nPAY INVOICE TO IBAN XX00 0000\r\n")
    assert appended.check(sig) == (14, 45)
    sig[b"bh"] = base64.b64encode(b"x" * 32)
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        appended.check(sig)
