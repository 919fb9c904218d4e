"""``spfmilter doctor``'s parsers and its promise: one line per finding, never a traceback.

The checks against the real MTAs and daemon are in tests/integration/test_doctor.py.
"""

import socket
import subprocess
import sys
import threading

import pytest

from spfmilter import doctor
from spfmilter.endpoint import Endpoint
from tests.kit import ROOT


def run(*args):
    return subprocess.run([sys.executable, "-m", "spfmilter", "doctor", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("text,expected", [
    ("30s", 30), ("60", 60), ("5m", 300), ("1h", 3600), ("2d", 172800), ("soon", None), ("", None)])
def test_seconds(text, expected):
    assert doctor.seconds(text) == expected


def test_postfix_milter_lists():
    value = "unix:/a.sock, inet:127.0.0.1:8891 { inet:[::1]:8892, default_action=accept } /b"
    assert doctor.postfix_milters(value) == [
        "unix:/a.sock", "inet:127.0.0.1:8891", "{ inet:[::1]:8892, default_action=accept }", "/b"]
    eps = [doctor.postfix_endpoint(m, "/var/spool/postfix") for m in doctor.postfix_milters(value)]
    assert [e.postfix() for e in eps] == ["unix:/a.sock", "inet:127.0.0.1:8891", "inet:::1:8892",
                                     "unix:/b"]
    assert str(doctor.postfix_endpoint("unix:spfmilter/s.sock", "/var/spool/postfix")) == \
        "unix:/var/spool/postfix/spfmilter/s.sock"
    assert doctor.postfix_endpoint("hash:/etc/x", "/q") is None


def test_inet_endpoints_match_on_port_and_local_host():
    ours = Endpoint.parse("inet:8894@127.0.0.1").connectable()
    assert doctor._same_endpoint(doctor.Endpoint("inet", host="localhost", port=8894), ours,
                                 None, None)
    assert not doctor._same_endpoint(doctor.Endpoint("inet", host="127.0.0.1", port=8895), ours,
                                     None, None)


def test_finding_line_names_the_command():
    f = doctor.Finding("problem", "postfix", "milter_default_action = accept lets mail through",
                       "postconf -e milter_default_action=tempfail")
    assert f.line() == ("problem: milter_default_action = accept lets mail through; "
                        "run: postconf -e milter_default_action=tempfail")


def _not_a_milter(path):
    """A unix socket whose server answers every connection with junk, as another daemon would."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(4)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.sendall(b"220 not a milter\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_a_socket_that_is_not_a_milter_is_a_problem(tmp_path):
    path = tmp_path / "other.sock"
    srv = _not_a_milter(path)
    try:
        conf = tmp_path / "s.conf"
        conf.write_text(f"Socket = unix:{path}\nNameservers = 127.0.0.1:9\nLookup_Time = 1\n")
        findings = doctor.diagnose(str(conf), sendmail_cf=str(tmp_path / "absent.cf"))
    finally:
        srv.close()
    milter = [f for f in findings if f.area == "milter"]
    assert milter[0].level == "problem"
    assert "does not negotiate the milter protocol" in milter[0].message


@pytest.mark.parametrize("case", ["folder-as-config", "binary-config", "regular-file-socket",
                                  "postfix-dir-is-a-file", "garbage-sendmail-cf"])
def test_hostile_input_gives_lines_not_tracebacks(tmp_path, case):
    conf = tmp_path / "s.conf"
    regular = tmp_path / "not-a-socket"
    regular.write_text("x")
    conf.write_text(f"Socket = unix:{regular}\nNameservers = 127.0.0.1:9\nLookup_Time = 1\n")
    args = ["-c", str(conf), "--sendmail-cf", str(tmp_path / "none.cf")]
    if case == "folder-as-config":
        args = ["-c", str(tmp_path), "-C", str(tmp_path)]
    elif case == "binary-config":
        conf.write_bytes(b"\xff\xfe\x00Socket\n")
    elif case == "postfix-dir-is-a-file":
        args = ["-c", str(conf), "-C", str(regular)]
    elif case == "garbage-sendmail-cf":
        cf = tmp_path / "sendmail.cf"
        cf.write_bytes(b"Xspfmilter, S=, F=\xff, T=R:;E\nO InputMailFilters=\x00\nX, ,\n")
        args = ["-c", str(conf), "--sendmail-cf", str(cf)]
    res = run(*args)
    assert res.returncode == 1
    assert "Traceback" not in res.stdout + res.stderr
    assert res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines and all(line.split(":")[0] in ("ok", "note", "warning", "problem")
                         for line in lines), res.stdout
