"""The core is pure: importing it pulls in no libmilter, pyspf, dnspython, authres or socket
code (the standard library only)."""

import pkgutil
import subprocess
import sys

import spfmilter.core
from tests.kit import ROOT

FORBIDDEN = {"spf", "Milter", "milter", "dns", "socket", "prometheus_client", "authres", "dkim"}


def _imports_in_fresh_interpreter(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_importing_spfmilter_core_imports_no_adapter():
    res = _imports_in_fresh_interpreter(
        "import sys, spfmilter.core; "
        "assert not {'spf', 'Milter', 'milter', 'dns'} & set(sys.modules)")
    assert res.returncode == 0, res.stderr


def test_every_core_module_is_pure():
    modules = [f"spfmilter.core.{m.name}" for m in pkgutil.iter_modules(spfmilter.core.__path__)]
    assert {"spfmilter.core.transaction", "spfmilter.core.decision",
            "spfmilter.core.headers", "spfmilter.core.policy"} <= set(modules)
    res = _imports_in_fresh_interpreter(
        "import importlib, sys\n"
        # what the interpreter loaded before any import of ours (site, a distribution's
        # sitecustomize): not the core's doing
        "before = {n.split('.')[0] for n in sys.modules}\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "tops = {n.split('.')[0] for n in sys.modules} - before\n"
        f"print(sorted(tops & {FORBIDDEN!r}))\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_the_core_loads_nothing_of_spfmilter_outside_it():
    """The core defines its own words (core.policy): importing every core module loads
    no configuration, front end or checker of spfmilter."""
    modules = [f"spfmilter.core.{m.name}" for m in pkgutil.iter_modules(spfmilter.core.__path__)]
    res = _imports_in_fresh_interpreter(
        "import importlib, sys\n"
        # what the interpreter loaded before any import of ours (site, a distribution's
        # sitecustomize): not the core's doing
        "before = {n.split('.')[0] for n in sys.modules}\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(n for n in sys.modules if n.startswith('spfmilter.')"
        " and not n.startswith('spfmilter.core')))\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_the_core_loads_only_the_standard_library():
    """Beyond the named adapters: no third-party package at all (authres included)."""
    modules = [f"spfmilter.core.{m.name}" for m in pkgutil.iter_modules(spfmilter.core.__path__)]
    res = _imports_in_fresh_interpreter(
        "import importlib, sys\n"
        # what the interpreter loaded before any import of ours (site, a distribution's
        # sitecustomize): not the core's doing
        "before = {n.split('.')[0] for n in sys.modules}\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "tops = {n.split('.')[0] for n in sys.modules} - before\n"
        "tops -= set(sys.stdlib_module_names) | {'spfmilter', '__main__'}\n"
        # what the interpreter loads before any import of ours (site's path hooks)
        "print(sorted(t for t in tops if not t.startswith(('_distutils_hack', '__editable__'))))\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
