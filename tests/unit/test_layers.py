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
    # (spf_memo is a part of the SPF check, kept apart for its one concern)
    "spfmilter.checks": ("spfmilter.core", "spfmilter.resolver", "spfmilter.checks.spf_memo"),
    "spfmilter.log": ("spfmilter.core",),
    "spfmilter.metrics": ("spfmilter.core",),
    "spfmilter.summary": (),                 # plain records in, counts out
    "spfmilter.report": ("spfmilter.summary",),
    # the steps around a decision; its checkers and observers are handed in
    "spfmilter.engine": ("spfmilter.core",),
    "spfmilter.runtime": ("spfmilter.config", "spfmilter.checks", "spfmilter.resolver",
                          "spfmilter.engine", "spfmilter.log", "spfmilter.metrics"),
    # what they meet is reported through the engine: neither log nor metrics (below)
    "spfmilter.frontends": ("spfmilter.core", "spfmilter.config", "spfmilter.checks",
                            "spfmilter.resolver", "spfmilter.runtime", "spfmilter.engine",
                            "spfmilter.frontends", "spfmilter.endpoint"),
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
FRONT_ENDS = ("frontends", "replay")
REPORTED_THROUGH_THE_ENGINE = ("spfmilter.log", "spfmilter.metrics")


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


def test_no_front_end_calls_log_or_metrics_directly():
    """A front end reports what it met (bad input, a closed client, a start or stop,
    connections in flight) through the engine's observers, so a probe or a test sees
    all of it and the lines and counts are written in one place: no module of a front
    end imports the log or the metrics, in any form (``from spfmilter import log``,
    ``import spfmilter.metrics``, ``from spfmilter.log import kv``)."""
    direct = []
    for folder in FRONT_ENDS:
        paths = sorted((PACKAGE / folder).rglob("*.py"))
        assert paths, folder   # a moved folder must not make this pass vacuously
        for path in paths:
            for target in _imports(path):
                if any(target == m or target.startswith(m + ".")
                       for m in REPORTED_THROUGH_THE_ENGINE):
                    direct.append(f"{_module_name(path)} imports {target}")
    assert direct == []
