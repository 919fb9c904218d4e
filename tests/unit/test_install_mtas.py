"""scripts/install-mtas.sh never changes which mail server a host runs.

The script is run for real with stubs first on PATH: a ``dpkg-query`` that
reports the host's packages, and every command that could install or change
something (apt-get, apt-cache, dpkg, debconf-set-selections, postfix,
systemctl) recording that it was called.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.kit import ROOT

SCRIPT = ROOT / "scripts" / "install-mtas.sh"
CHANGERS = ("apt-get", "apt-cache", "dpkg", "debconf-set-selections", "postfix", "systemctl",
            "unshare", "ldd", "mkdir", "cp")


def run_with(tmp_path: Path, installed: list[tuple[str, str, str]]
             ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the script with a dpkg-query that lists ``installed`` (status, package,
    provides); returns the result and the stubbed commands it called."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "calls"
    calls.touch()
    listing = "".join(f"{s}\t{p}\t{v}\n" for s, p, v in installed)
    (tmp_path / "listing").write_text(listing)
    (stubs / "dpkg-query").write_text(f'#!/bin/sh\ncat "{tmp_path}/listing"\n')
    for name in CHANGERS:
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:/usr/bin:/bin"}
    res = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=60)
    return res, calls.read_text().splitlines()


@pytest.mark.parametrize("mta", ["exim4-daemon-light", "sendmail-bin", "opensmtpd"])
def test_a_host_running_another_mta_is_refused_before_anything_is_installed(tmp_path, mta):
    res, calls = run_with(tmp_path, [
        ("installed", "libc6", ""),
        ("installed", mta, "mail-transport-agent"),
        ("not-installed", "postfix", "default-mta, mail-transport-agent"),
    ])
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert f"this host's mail server is {mta}, not Postfix" in lines[0]
    assert "nothing was installed" in lines[0]
    assert calls == []


def test_removed_mta_and_postfix_itself_do_not_stop_the_lab(tmp_path):
    """Only a mail server that is there counts: exim4 removed (its config files left)
    or Postfix already installed is not a reason to refuse."""
    res, calls = run_with(tmp_path, [
        ("config-files", "exim4-daemon-light", "mail-transport-agent"),
        ("installed", "postfix", "default-mta, mail-transport-agent"),
    ])
    assert "mail server" not in res.stderr
    if os.geteuid() == 0:  # it went on to look for the lab's packages (stubs fail: it stops)
        assert any(c.startswith("apt-cache show postfix") for c in calls), (calls, res.stderr)
    else:
        assert res.returncode == 2 and "needs root" in res.stderr
