"""The command line: `spfmilter check` through the real milter class, --version, --help."""

import subprocess
import sys

from tests.kit import ROOT


def run(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "spfmilter", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def conf(tmp_path, dns_server, extra=""):
    path = tmp_path / "check.conf"
    path.write_text(f"Nameservers = {dns_server.nameserver}\nAuthserv_Id = mx.test\n{extra}")
    return str(path)


def test_check_shows_fail_for_a_forged_sender(tmp_path, dns_server):
    res = run("check", "-c", conf(tmp_path, dns_server), "--ip", "198.51.100.7",
              "--helo", "mail.forger.example", "--from", "ceo@allowed.test", "--rcpt", "staff@mx.test")
    assert res.returncode == 0, res.stderr
    assert "MAIL FROM result: fail (ceo@allowed.test)" in res.stdout
    assert "RCPT TO:<staff@mx.test>: reject -> 550 5.7.23 " in res.stdout
    assert "198.51.100.7 is not one of allowed.test's designated mail servers" in res.stdout
    assert "Headers added" not in res.stdout


def test_check_shows_pass_and_headers_for_an_authorized_sender(tmp_path, dns_server):
    res = run("check", "-c", conf(tmp_path, dns_server), "--ip", "192.0.2.10",
              "--helo", "helo.test", "--from", "user@allowed.test")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "HELO result:      pass (postmaster@helo.test)" in out
    assert "MAIL FROM result: pass (user@allowed.test)" in out
    assert "RCPT TO:<postmaster@localhost>: continue" in out
    lines = out.splitlines()
    top = lines[lines.index("Headers added (top of the message first):") + 1:]
    assert top[0] == ("  Authentication-Results: mx.test; spf=pass smtp.helo=helo.test; "
                      "spf=pass smtp.mailfrom=allowed.test")
    assert top[1].startswith("  Received-SPF: pass (mx.test: domain of user@allowed.test designates")
    assert "action=accept" in res.stderr  # the same decision line the daemon logs


def test_check_with_bad_config_is_one_line(tmp_path, dns_server):
    res = run("check", "-c", conf(tmp_path, dns_server, "Header_Type = fancy\n"),
              "--ip", "192.0.2.10", "--from", "a@b.test")
    assert res.returncode == 1
    assert res.stderr.strip().endswith("check.conf:3: Header_Type: expected one of SPF | AR | both | None, got 'fancy'")


def test_version_and_help():
    from spfmilter import __version__
    assert run("--version").stdout.strip() == f"spfmilter {__version__}"
    helptext = run("--help").stdout
    for word in ("--socket", "--check-config", "check"):
        assert word in helptext
    assert "--from" in run("check", "--help").stdout


def test_socket_override_and_unusable_socket(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("Socket = unix:/nonexistent-dir/x/y.sock\n")
    res = run("-c", str(path), "--socket", "inet:notaport", "--log", "stderr")
    assert res.returncode == 1 and "--socket: bad port in 'inet:notaport'" in res.stderr


def test_check_config_without_c_names_the_installed_file_it_validated(tmp_path, monkeypatch, capsys):
    from spfmilter import cli
    from spfmilter import config as cfg

    installed = tmp_path / "spfmilter.conf"   # stands in for /etc/spfmilter/spfmilter.conf
    installed.write_text("HELO_reject = Softfail\n")
    monkeypatch.setattr(cfg, "DEFAULT_PATH", str(installed))
    assert cli.main(["--check-config"]) == 0
    assert capsys.readouterr().out == f"spfmilter: {installed}: OK\n"
    installed.write_text("HELO_reject = yes\n")  # and it is that file that is validated
    assert cli.main(["--check-config"]) == 1
    assert capsys.readouterr().err.startswith(f"spfmilter: {installed}:1: HELO_reject: ")
    monkeypatch.setattr(cfg, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    assert cli.main(["--check-config"]) == 0
    assert capsys.readouterr().out == \
        f"spfmilter: built-in defaults (no {tmp_path / 'absent.conf'}): OK\n"


def test_readme_example_of_a_config_error_is_the_real_output(tmp_path):
    readme = (ROOT / "README.rst").read_text()
    [example] = [line.strip() for line in readme.splitlines()
                 if line.strip().startswith("spfmilter: /etc/spfmilter/spfmilter.conf:12: ")]
    conf = tmp_path / "spfmilter.conf"
    conf.write_text("#\n" * 11 + "HELO_reject = yes\n")
    res = subprocess.run([sys.executable, "-m", "spfmilter", "--check-config", "-c", str(conf)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip() == example.replace("/etc/spfmilter/spfmilter.conf", str(conf))


def test_manual_synopsis_names_every_command_and_option():
    import argparse

    from spfmilter import cli

    page = (ROOT / "docs" / "man" / "spfmilter.8.rst").read_text()
    synopsis = page.split("SYNOPSIS")[1].split("DESCRIPTION")[0]
    lines = [line for line in synopsis.splitlines() if line.startswith("| ")]
    parser = cli._parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    groups = {"": parser, **commands.choices}
    for name, sub in groups.items():
        mine = [line for line in lines if (f"``spfmilter {name}" in line if name
                                           else not any(f"``spfmilter {c}" in line
                                                        for c in commands.choices))]
        assert mine, f"no synopsis line for {name or 'the daemon'}"
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or action.dest in ("help", "command"):
                continue
            names = action.option_strings or [str(action.metavar or action.dest)]  # positional
            assert any(opt in "".join(mine) for opt in names), (name, names)
