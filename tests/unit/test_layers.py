"""Imports flow one way: cli -> daemon -> front ends -> runtime -> engine -> core (the runtime
also builds the checkers, from config, checks and resolver, and wires log and metrics to the
engine as its observers).

Read from the source (ast), so a shortcut across layers fails here, with the
module and the import that breaks the rule (docs/design.md explains the layers).
"""

import ast
from pathlib import Path

from tests.kit import ROOT

PACKAGE = ROOT / "spfmilter"

# module (or package prefix) -> what of spfmilter it may import (prefixes)
ALLOWED: dict[str, tuple[str, ...]] = {
    "spfmilter.milter_protocol": (),
    "spfmilter.core": ("spfmilter.core",),   # the domain model: it names its own words
    "spfmilter.endpoint": ("spfmilter.core.addresses",),
    "spfmilter.config": ("spfmilter.core", "spfmilter.endpoint", "spfmilter.config_values"),
    "spfmilter.config_values": ("spfmilter.core", "spfmilter.endpoint"),
    "spfmilter.resolver": (),
    "spfmilter.checks": ("spfmilter.core", "spfmilter.resolver"),
    "spfmilter.log": ("spfmilter.core",),
    "spfmilter.metrics": ("spfmilter.core",),
    "spfmilter.summary": (),                 # plain records in, counts out
    "spfmilter.report": ("spfmilter.summary",),
    # the steps around a decision; its checkers and observers are handed in
    "spfmilter.engine": ("spfmilter.core",),
    "spfmilter.runtime": ("spfmilter.config", "spfmilter.checks", "spfmilter.resolver",
                          "spfmilter.engine", "spfmilter.log", "spfmilter.metrics"),
    "spfmilter.frontends": ("spfmilter.core", "spfmilter.config", "spfmilter.checks",
                            "spfmilter.resolver", "spfmilter.runtime", "spfmilter.engine",
                            "spfmilter.log", "spfmilter.metrics", "spfmilter.frontends",
                            "spfmilter.endpoint"),
    "spfmilter.replay": ("spfmilter.core", "spfmilter.config", "spfmilter.checks",
                         "spfmilter.resolver", "spfmilter.frontends",
                         "spfmilter.replay", "spfmilter.summary"),   # a front end: a mail
                                                                   # store through check
    "spfmilter.doctor": ("spfmilter.config", "spfmilter.resolver", "spfmilter.milter_protocol",
                         "spfmilter.endpoint", "spfmilter.frontends", "spfmilter.log",
                         "spfmilter.doctor"),   # its facts, rules and driver
    "spfmilter.daemon": ("spfmilter.core", "spfmilter.config", "spfmilter.runtime",
                         "spfmilter.log", "spfmilter.metrics", "spfmilter.frontends"),
}
ANYWHERE = ("spfmilter",)  # `from spfmilter import __version__`, anywhere but in the core
CORE = "spfmilter.core"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names if node.module == "spfmilter"]
    return [m for m in out if m == "spfmilter" or m.startswith("spfmilter.")]


def _rule(module: str) -> tuple[str, ...] | None:
    best = None
    for prefix in ALLOWED:
        if (module == prefix or module.startswith(prefix + ".")) and \
                (best is None or len(prefix) > len(best)):
            best = prefix
    return ALLOWED[best] if best else None


def _allowed(target: str, allowed: tuple[str, ...], module: str) -> bool:
    in_core = module == CORE or module.startswith(CORE + ".")
    if (target in ANYWHERE or target == "spfmilter.__version__") and not in_core:
        return True
    return any(target == a or target.startswith(a + ".") for a in allowed)


def test_imports_flow_one_way():
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        allowed = _rule(module)
        if allowed is None:   # cli, __main__: the top may import anything
            continue
        for target in _imports(path):
            if not _allowed(target, allowed, module):
                broken.append(f"{module} imports {target}")
    assert broken == []


def test_the_rule_table_covers_every_module_but_the_top():
    uncovered = [m for m in (_module_name(p) for p in PACKAGE.rglob("*.py"))
                 if _rule(m) is None and m not in ("spfmilter", "spfmilter.cli", "spfmilter.__main__")]
    assert uncovered == []
