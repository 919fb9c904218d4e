"""libFuzzer (atheris) entry point: ``python -m tests.fuzz.atheris_main TARGET [libFuzzer flags]``.

TARGET is one of tests/fuzz/targets.py's TARGETS.  spfmilter, authres and
pyspf are instrumented for coverage; a target's exception is a finding
(libFuzzer writes the input to its artifact prefix).  $FUZZ_IGNORE lists, one
per line, kinds of finding already reported, so a rerun looks for new ones.
"""

from __future__ import annotations

import os
import sys

import atheris


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python -m tests.fuzz.atheris_main TARGET [libFuzzer flags]")
    name = sys.argv.pop(1)
    with atheris.instrument_imports(include=["spfmilter", "authres", "spf"]):
        import authres  # noqa: F401
        import spf  # noqa: F401

        import spfmilter.checks.spf
        import spfmilter.core.decision
        import spfmilter.core.headers
        import spfmilter.frontends.milter  # noqa: F401
    from tests.fuzz.targets import TARGETS, ignoring_known

    target = ignoring_known(TARGETS[name](), os.environ.get("FUZZ_IGNORE", ""))
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
