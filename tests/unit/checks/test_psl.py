"""Organizational domains from the Public Suffix List, with either parser (PyPI's
publicsuffixlist, or Debian 12's python3-publicsuffix2) on the distribution's list."""

import builtins

import pytest

from spfmilter.checks import psl

CASES = [("mail.bank.example", "bank.example"), ("Mail.Bank.Example.", "bank.example"),
         ("a.b.co.uk", "b.co.uk"), ("co.uk", "co.uk"), ("x.github.io", "x.github.io"),
         ("deep.sub.x.github.io", "x.github.io"), ("bank.example", "bank.example")]


def _fresh(monkeypatch, without=None):
    monkeypatch.setattr(psl, "_registered", None)
    psl.organizational_domain.cache_clear()
    if without:
        real_import = builtins.__import__

        def refuse(name, *args, **kwargs):
            if name == without:
                raise ImportError(name)
            return real_import(name, *args, **kwargs)
        monkeypatch.setattr(builtins, "__import__", refuse)


@pytest.mark.parametrize("parser", ["publicsuffixlist", "publicsuffix2"])
def test_organizational_domains(monkeypatch, parser):
    _fresh(monkeypatch, without="publicsuffixlist" if parser == "publicsuffix2" else None)
    try:
        assert [psl.organizational_domain(n) for n, _ in CASES] == [o for _, o in CASES]
    finally:
        monkeypatch.undo()
        psl._registered = None
        psl.organizational_domain.cache_clear()
