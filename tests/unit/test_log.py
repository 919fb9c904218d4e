"""The decision line's keys: each one documented in README's Logging section."""

from __future__ import annotations

import ast

from tests.kit import ROOT


def _decision_keys() -> list[str]:
    tree = ast.parse((ROOT / "spfmilter" / "log.py").read_text())
    [func] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "decision"]
    [call] = [n for n in ast.walk(func) if isinstance(n, ast.Call)
              and isinstance(n.func, ast.Name) and n.func.id == "kv"]
    return [k.arg for k in call.keywords if k.arg]


def test_every_key_of_the_decision_line_is_documented_in_the_logging_section():
    readme = (ROOT / "README.rst").read_text()
    logging = readme.split(".. man-start: logging")[1].split(".. man-end: logging")[0]
    keys = _decision_keys()
    assert "client_ip" in keys and keys[-1] == "reply"
    extras = ["mta", "daemon", "via"]   # the front ends' own (milter: mta, daemon; policy: via)
    undocumented = [k for k in keys + extras if f"``{k}``" not in logging]
    assert undocumented == []
