"""Configuration parsing: typed values, defaults, and one-line errors naming file, line, key."""

import dataclasses
import ipaddress
import re
import subprocess
import sys

import pytest

from spfmilter import config as cfg
from tests.kit import ROOT


def test_defaults_are_safe():
    s = cfg.Settings()
    assert str(s.socket).startswith("unix:")
    assert s.policy.helo_reject is cfg.HeloPolicy.FAIL
    assert s.policy.mail_from_reject is cfg.MailFromPolicy.FAIL
    assert not s.policy.permerror_reject and not s.policy.temperror_defer
    assert ipaddress.ip_network("127.0.0.0/8") in s.policy.skip_addresses
    assert s.policy.header_type is cfg.HeaderType.BOTH
    assert s.umask == 0o007


def test_parses_every_key_with_policyd_spf_spelling():
    text = """
    # comment
    Socket = inet:8894@127.0.0.1
    HELO_reject = SPF_Not_Pass
    Mail_From_reject = softfail
    PermError_reject = True
    TempError_Defer = yes
    skip_addresses = 127.0.0.0/8, ::1, 10.1.2.3
    Whitelist = 192.0.2.0/24
    Domain_Whitelist = pobox.com, Forwarder.Example.
    HELO_Whitelist = relay.example.net
    Exempt_Recipients = postmaster@, abuse@example.com, @example.org
    Header_Type = AR
    Authserv_Id = mx.example.com
    Hide_Receiver = Yes
    Lookup_Time = 7.5
    Void_Limit = 3
    Reason_Message = {rejectdefer}: {exp}
    Nameservers = 127.0.0.1:5353, [::1]:53, 192.0.2.53
    UserID = spfmilter
    PidFile = /run/spfmilter/spfmilter.pid
    UMask = 002
    debugLevel = 2
    TestOnly = 1
    """
    s = cfg.parse_text(text, "x.conf")
    assert str(s.socket) == "inet:8894@127.0.0.1"
    assert s.policy.helo_reject is cfg.HeloPolicy.SPF_NOT_PASS
    assert s.policy.mail_from_reject is cfg.MailFromPolicy.SOFTFAIL
    assert s.policy.permerror_reject and s.policy.temperror_defer
    assert ipaddress.ip_network("10.1.2.3/32") in s.policy.skip_addresses
    assert s.policy.domain_whitelist == ("pobox.com", "forwarder.example")
    assert s.policy.exempt_recipients == ("postmaster@", "abuse@example.com", "@example.org")
    assert s.policy.header_type is cfg.HeaderType.AR
    assert s.policy.hide_receiver and s.policy.lookup_time == 7.5 and s.policy.void_limit == 3
    assert s.nameservers == (("127.0.0.1", 5353), ("::1", 53), ("192.0.2.53", 53))
    assert s.umask == 0o002 and s.debug_level == 2 and s.policy.never_refuse is False


def test_settings_are_frozen():
    s = cfg.Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.socket = "unix:/tmp/x"  # type: ignore[misc]


@pytest.mark.parametrize("line,key,fragment", [
    ("Bogus_Key = 1", "Bogus_Key", "unknown key"),
    ("HELO_reject = Sometimes", "HELO_reject", "expected one of"),
    ("Pass_All_Records = fail", "Pass_All_Records", "expected one of neutral | pass"),
    ("PermError_reject = maybe", "PermError_reject", "expected True or False"),
    ("skip_addresses = 300.1.1.1", "skip_addresses", "not an IP address"),
    ("Socket = tcp:25", "Socket", "unknown socket type"),
    ("Socket = unix:relative/path", "Socket", "absolute path"),
    ("Lookup_Time = -1", "Lookup_Time", "between 0 and 3600"),
    ("Nameservers = ns.example.com", "Nameservers", "not IP[:port]"),
    ("Reason_Message = {nosuch}", "Reason_Message", "unknown placeholder"),
    ("UMask = 999", "UMask", "octal"),
    ("Exempt_Recipients = nobody", "Exempt_Recipients", "user@domain"),
    ("just words", None, "expected 'Key = value'"),
])
def test_errors_name_file_line_and_key(line, key, fragment):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse_text(f"# header\n\n{line}\n", "/etc/spfmilter.conf")
    msg = str(err.value)
    assert msg.startswith("/etc/spfmilter.conf:3")
    if key:
        assert f": {key}:" in msg
    assert fragment in msg
    assert "\n" not in msg


def test_duplicate_key_is_an_error():
    with pytest.raises(cfg.ConfigError, match=r"x:2: Socket: given twice \(first on line 1\)"):
        cfg.parse_text("Socket = unix:/a\nsocket = unix:/b\n", "x")


def test_unreadable_file(tmp_path):
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.parse(tmp_path / "missing.conf")


def test_shipped_config_is_valid():
    s = cfg.parse(ROOT / "spfmilter.conf")
    assert str(s.socket) == "unix:/run/spfmilter/spfmilter.sock"


def test_every_key_is_in_the_shipped_file_and_the_readme():
    shipped = (ROOT / "spfmilter.conf").read_text()
    readme = (ROOT / "README.rst").read_text()
    for key in cfg.KNOWN_KEYS:
        assert re.search(rf"^#?{key} =", shipped, re.M), key
        assert f"``{key}``" in readme, key


def test_pass_all_records_defaults_to_neutral_and_takes_pass():
    assert cfg.Settings().policy.pass_all_records is cfg.PassAllPolicy.NEUTRAL
    assert cfg.parse_text("Pass_All_Records = Pass").policy.pass_all_records is cfg.PassAllPolicy.PASS


def _run(*args):
    return subprocess.run([sys.executable, "-m", "spfmilter", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_check_config_command(tmp_path):
    good = _run("--check-config", "-c", str(ROOT / "spfmilter.conf"))
    assert good.returncode == 0, good.stderr
    bad_file = tmp_path / "bad.conf"
    bad_file.write_text("Socket = unix:/x\nTempError_Defer = perhaps\n")
    bad = _run("--check-config", "-c", str(bad_file))
    assert bad.returncode == 1
    assert bad.stderr.strip() == (f"spfmilter: {bad_file}:2: TempError_Defer: "
                                  "expected True or False, got 'perhaps'")
    assert "Traceback" not in bad.stderr


def test_daemon_refuses_bad_config_in_one_line(tmp_path):
    bad_file = tmp_path / "bad.conf"
    bad_file.write_text("Whitelist = not-a-net\n")
    res = _run("-c", str(bad_file))
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "bad.conf:1: Whitelist:" in res.stderr


@pytest.mark.parametrize("key,fragment", [
    ("No_Mail = True", "use Mail_From_reject = Fail"),
    ("Domain_Whitelist_PTR = example.com", "use Whitelist"),
    ("Mock = True", "spfmilter check"),
    ("Prospective = 192.0.2.1", "spfmilter check --ip"),
    ("Per_User = /etc/x", "[recipient ...] sections"),
    ("defaultSeedOnly = 1", "use TestOnly"),
    ("MacroList = x", "not needed"),
])
def test_foreign_keys_are_refused_with_what_to_use_instead(key, fragment):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse_text(key + "\n", "policyd-spf.conf")
    assert "not supported by spfmilter: " in str(err.value) and fragment in str(err.value)
    assert str(err.value).startswith("policyd-spf.conf:1: ")


def test_policyd_spf_values_are_honoured():
    s = cfg.parse_text("Authserv_Id = HEADER\nHide_Receiver = Yes\nInternalHosts = 127.0.0.1\n"
                       "Whitelist_Lookup_Time = 5\nQueueID = False\n")
    import socket
    assert s.policy.authserv_id == socket.gethostname() and s.policy.hide_receiver
    assert s.policy.internal_hosts == (ipaddress.ip_network("127.0.0.1/32"),)
    assert s.policy.whitelist_lookup_time == 5 and s.log_queue_id is False


def test_recipient_sections_are_validated():
    with pytest.raises(cfg.ConfigError, match=r"x:3: Socket: cannot be set per recipient"):
        cfg.parse_text("Socket = unix:/a\n[recipient @b.test]\nSocket = unix:/b\n", "x")
    with pytest.raises(cfg.ConfigError, match=r"x:2: Mail_From_reject: No_Check cannot be set"):
        cfg.parse_text("[recipient a@]\nMail_From_reject = No_Check\n", "x")
    with pytest.raises(cfg.ConfigError, match=r"x:1: expected a section"):
        cfg.parse_text("[sender a@b]\n", "x")


def test_local_rules_best_guess_and_metrics_values():
    s = cfg.parse_text("Local_Rules = include:spf.trusted-forwarder.org ip4:192.0.2.0/24\n"
                       "Best_Guess = v=spf1 a/24 mx/24 ptr\nMetrics = 127.0.0.1:9095\n")
    assert s.policy.local_rules == "include:spf.trusted-forwarder.org ip4:192.0.2.0/24"
    assert s.policy.best_guess == "v=spf1 a/24 mx/24 ptr" and s.metrics == ("127.0.0.1", 9095)
    for bad in ("Local_Rules = frobnicate", "Best_Guess = a mx", "Metrics = 9095"):
        with pytest.raises(cfg.ConfigError):
            cfg.parse_text(bad + "\n")


def test_workers_is_a_count_or_auto():
    assert cfg.Settings().workers == 0                    # auto: one per CPU, decided at start
    assert cfg.parse_text("Workers = auto\n", "x").workers == 0
    assert cfg.parse_text("Workers = AUTO\n", "x").workers == 0
    assert cfg.parse_text("Workers = 4\n", "x").workers == 4
    for bad in ("0", "-1", "257", "two", "1.5"):
        with pytest.raises(cfg.ConfigError,
                           match=r"^x:1: Workers: expected (1 to 256|a number of) processes or auto"):
            cfg.parse_text(f"Workers = {bad}\n", "x")


def test_every_key_lands_in_the_policy_or_the_service_settings_never_both():
    service = {f.name for f in dataclasses.fields(cfg.Settings)} - {"policy"}
    policy = {f.name for f in dataclasses.fields(cfg.Policy)}
    assert not service & policy
    fields = {field_name for _, field_name, _ in cfg._KEYS.values()}
    # nothing parsed is dropped, nothing is left unset ([recipient] sections fill the last)
    assert fields | {"recipient_policies"} == service | policy
    assert cfg.RECIPIENT_KEYS <= policy          # a section changes only what decides


def test_the_core_gets_the_policy_and_never_the_service_settings():
    s = cfg.parse_text("Socket = unix:/run/x.sock\nUserID = mail\nWorkers = 3\n"
                       "Mail_From_reject = Softfail\n[recipient @strict.test]\nTestOnly = 0\n")
    assert isinstance(s.policy, cfg.Policy)
    assert s.policy.mail_from_reject is cfg.MailFromPolicy.SOFTFAIL
    assert not any(hasattr(s.policy, name) for name in ("socket", "user_id", "workers", "umask"))
    strict = s.policy.for_recipient("a@strict.test")
    assert strict.never_refuse is True and s.policy.never_refuse is False
    assert strict.mail_from_reject is cfg.MailFromPolicy.SOFTFAIL


def test_testonly_1_is_normal_operation_and_0_never_refuses():
    assert cfg.parse_text("TestOnly = 1\n").policy.never_refuse is False
    assert cfg.parse_text("TestOnly = 0\n").policy.never_refuse is True
    assert cfg.Settings().policy.never_refuse is False


def test_overrides_reach_the_policy_and_the_service_settings():
    s = cfg.Settings().with_overrides(socket="unix:/tmp/x.sock", dkim_rescue=True,
                                      trusted_relays=(ipaddress.ip_network("10.0.0.0/8"),))
    assert s.socket == "unix:/tmp/x.sock"
    assert s.policy.dkim_rescue and s.policy.trusted_relays == (ipaddress.ip_network("10.0.0.0/8"),)
    assert cfg.Settings().policy.dkim_rescue is False     # the original is untouched
    with pytest.raises(TypeError):
        cfg.Settings().with_overrides(no_such_setting=1)
