"""spfmilter report: reading decision lines out of syslog, journal and rotated logs.

The messages are written by spfmilter.log.kv (the daemon's own formatter), so
the parser is tested against the quoting the daemon really does; the prefixes
are the ones syslog, the journal and spfmilter's own file handler write.
tests/integration/test_report.py reads logs the real daemon wrote.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import time

import pytest

from spfmilter import report
from spfmilter.log import kv
from spfmilter.summary import Summary

HOSTILE = ['a "b" c\\', 'x envelope_from=evil@forged.example', '\\"', 'end\\',
           'k=v;w', '"', 'sp ace" client_ip="6.6.6.6']


def decision_line(prefix: str = "Dec  5 05:14:52 mx spfmilter[811]: ", **over: object) -> str:
    # in log.decision()'s order (an override keeps its key's place)
    fields: dict[str, object] = dict(
        action="reject", reason="mailfrom fail", identity="mailfrom", result="fail",
        helo_result="none", authorizes_all=None, client_ip="198.51.100.7",
        helo="mail.example.net", envelope_from="ceo@Example.COM", relay=None, dkim=None,
        rcpt="staff@example.org", receiver="mx.example.org",
        queue_id="4XyZ1", mta="mx.example.org", daemon="smtpd", reply="550 5.7.23")
    fields.update(over)
    return prefix + kv(**fields) + "\n"


def read(lines: list[str], **kw: object) -> tuple[Summary, report.Reader]:
    summary = Summary()
    reader = report.Reader(summary, **kw)  # type: ignore[arg-type]
    reader.feed(lines)
    return summary, reader


@pytest.mark.parametrize("helo", HOSTILE)
def test_quoted_values_with_escapes_read_back_as_the_daemon_wrote_them(helo):
    line = decision_line(helo=helo)
    start = report.message_start(line)
    assert report.fields(line, start)["helo"] == helo
    assert report.fields(line, start)["envelope_from"] == "ceo@Example.COM"
    done, fast = report.decision(line, start, None)
    assert done and fast is not None
    assert (fast.helo, fast.sender_domain, fast.client_ip) == (helo, "example.com", "198.51.100.7")


def test_a_key_added_in_the_middle_falls_back_to_the_generic_parse_with_the_same_record():
    plain = decision_line()
    extra = plain.replace(" client_ip=", ' newkey="x y" client_ip=')
    assert report.decision(extra, report.message_start(extra), None) == (False, None)
    a, _ = read([plain])
    b, _ = read([extra])
    assert a.to_json() == b.to_json() and a.decisions == 1


def test_a_line_cut_short_inside_a_quoted_value_still_counts_its_action():
    line = decision_line(helo="never closed " * 10)
    cut = line[:line.index("never closed") + 30] + "\n"
    summary, _ = read([cut])
    assert summary.actions == {"reject": 1}


@pytest.mark.parametrize("tail", ['"' + "a\\" * 200_000, '"' + "a" * 400_000,
                                  "a" * 400_000, '"' + "a=" * 200_000, '"' + " a" * 200_000])
def test_a_hostile_unterminated_value_is_parsed_in_linear_time(tail):
    line = "Dec  5 05:14:52 mx spfmilter[1]: action=accept reason=" + tail + "\n"
    started = time.monotonic()
    summary, _ = read([line] * 5)
    assert time.monotonic() - started < 2.0
    assert summary.actions == {"accept": 5}


@pytest.mark.parametrize("line", [
    "Dec  5 05:14:52 mx postfix/smtpd[12]: NOQUEUE: reject: from=<x spfmilter[1]: action=reject",
    "Dec  5 05:14:52 mx other[1]: action=reject client_ip=1.2.3.4",
    "Dec  5 05:14:52 mx spfmilter[1]: note action=reject",
    "Dec  5 05:14:52 mx postfix/cleanup[3]: 4XyZ1: message-id=<a@b>",
])
def test_lines_that_are_not_spfmilter_messages_are_ignored(line):
    summary, reader = read([line + "\n"])
    assert summary.decisions == 0 and reader.lines == 1


@pytest.mark.parametrize("prefix,when", [
    ("Dec  5 05:14:52 mx spfmilter[811]: ", dt.datetime(2026, 12, 5, 5, 14, 52)),    # syslog
    ("Dec 05 05:14:52 mx spfmilter[811]: ", dt.datetime(2026, 12, 5, 5, 14, 52)),    # -o short
    ("Dec 05 05:14:52.123456 mx spfmilter[811]: ",                                 # short-precise
     dt.datetime(2026, 12, 5, 5, 14, 52)),
    ("2026-12-05 05:14:52,123 spfmilter[811]: ",                                   # --log stderr
     dt.datetime(2026, 12, 5, 5, 14, 52, 123000)),
    ("2026-12-05T05:14:52.500000+01:00 mx spfmilter[811]: ", None),                # RFC 3339
    ("", None),                                                                    # -o cat
])
def test_syslog_journal_and_own_formats_give_the_decision_and_its_time(prefix, when):
    clock = report.Clock(now=dt.datetime(2026, 12, 6))
    summary, _ = read([decision_line(prefix)], clock=clock)
    assert summary.actions == {"reject": 1}
    assert summary.refused[0].counts == {"example.com": 1}
    if prefix.startswith("2026-12-05T"):   # an offset: converted to local time
        expected = dt.datetime(2026, 12, 5, 4, 14, 52, 500000,
                               tzinfo=dt.UTC).astimezone().replace(tzinfo=None)
        assert summary.first == expected
    else:
        assert summary.first == when


def test_a_syslog_stamp_without_year_in_the_future_is_last_years():
    clock = report.Clock(now=dt.datetime(2027, 1, 2, 10, 0))
    assert clock("Dec 31 23:59:59 mx spfmilter[1]: ") == dt.datetime(2026, 12, 31, 23, 59, 59)
    assert clock("Jan  2 09:00:00 mx spfmilter[1]: ") == dt.datetime(2027, 1, 2, 9, 0, 0)


def test_since_and_until_keep_the_period_and_a_bare_until_date_takes_its_whole_day():
    lines = [decision_line(f"2026-12-0{d} 12:00:00,000 spfmilter[1]: ",
                           envelope_from=f"u@d{d}.example") for d in (3, 4, 5, 6)]
    lines.append(decision_line("", envelope_from="u@undated.example"))      # -o cat
    summary, reader = read(lines, since=report.parse_date("2026-12-04"),
                           until=report.parse_date("2026-12-05", end=True))
    assert summary.refused[0].counts == {"d4.example": 1, "d5.example": 1}
    assert reader.undated_skipped == 1
    assert summary.first == dt.datetime(2026, 12, 4, 12) and \
        summary.last == dt.datetime(2026, 12, 5, 12)
    summary, _ = read(lines, until=report.parse_date("2026-12-05 12:00"))
    assert set(summary.refused[0].counts) == {"d3.example", "d4.example"}


def test_a_bad_date_is_a_one_line_error():
    with pytest.raises(report.ReportError, match="'yesterday' is not a date"):
        report.parse_date("yesterday")


def test_rotated_and_gzip_logs_are_read_whatever_their_names(tmp_path):
    (tmp_path / "mail.log").write_text(decision_line(envelope_from="a@one.example"))
    (tmp_path / "mail.log.1").write_bytes(gzip.compress(   # gzip'd, not named .gz
        decision_line(envelope_from="b@two.example").encode()))
    (tmp_path / "mail.log.2.gz").write_bytes(gzip.compress(
        ("junk \xff\n" + decision_line(envelope_from="c@three.example")).encode("latin-1")))
    summary = Summary()
    reader, errors = report.run([str(tmp_path / n) for n in ("mail.log", "mail.log.1",
                                                             "mail.log.2.gz")], summary)
    assert errors == [] and reader.lines == 4
    assert set(summary.refused[0].counts) == {"one.example", "two.example", "three.example"}


def test_a_truncated_gzip_and_a_missing_file_are_one_line_errors_keeping_what_was_read(tmp_path):
    data = gzip.compress("".join(decision_line(envelope_from=f"u@d{i}.example")
                                 for i in range(2000)).encode())
    (tmp_path / "cut.gz").write_bytes(data[:len(data) // 2])
    summary = Summary()
    _, errors = report.run([str(tmp_path / "cut.gz"), str(tmp_path / "absent.log")], summary)
    assert len(errors) == 2 and all("\n" not in e for e in errors)
    assert errors[0].startswith(f"{tmp_path / 'cut.gz'}: ")
    assert errors[1] == f"{tmp_path / 'absent.log'}: No such file or directory"
    assert 0 < summary.decisions < 2000


def test_a_held_refusal_counts_once_at_end_of_message_as_a_rescue():
    lines = [decision_line(action="accept", reason="mailfrom fail, held for DKIM_Rescue",
                           reply=None),
             decision_line(action="accept", reason="mailfrom fail rescued by DKIM d=example.com",
                           dkim="pass:example.com", reply=None),
             decision_line(action="reject", reason="mailfrom fail, not rescued: no aligned "
                                                   "DKIM signature")]
    summary, _ = read(lines)
    assert (summary.decisions, summary.provisional) == (2, 1)
    assert (summary.rescued, summary.not_rescued) == (1, 1)
    assert summary.rescued_by_domain.counts == {"example.com": 1}


def test_a_relayed_message_counts_its_hop_once_at_end_of_message():
    lines = [decision_line(action="accept", reason="trusted relay: SPF at end of headers",
                           identity=None, result=None, helo_result=None, client_ip="10.0.0.2",
                           relay="10.0.0.2", reply=None),
             decision_line(relay="10.0.0.2")]
    summary, _ = read(lines)
    assert (summary.decisions, summary.provisional) == (1, 1)
    assert summary.relay_hops.counts == {"10.0.0.2": 1}


def test_testonly_shows_what_it_kept_from_refusing():
    summary, _ = read([decision_line(action="accept", reason="mailfrom fail, TestOnly: would "
                                                             "reject", reply=None)])
    assert summary.actions == {"accept": 1} and summary.refused[0].total() == 0
    assert summary.would_actions == {"reject": 1}
    assert summary.would[1].counts == {"198.51.100.7": 1}


def test_temperrors_internal_errors_and_dns_failures_by_name():
    lines = [decision_line(action="defer", reason="mailfrom temperror", result="temperror",
                           envelope_from="u@dead.example"),
             decision_line(action="accept", reason="spf temperror", helo_result="temperror",
                           result="temperror", identity="helo", helo="Slow.Example"),
             "Dec  5 05:14:52 mx spfmilter[811]: " + kv(
                 action="tempfail", error="RuntimeError: earlier fault: x", callback="envrcpt",
                 queue_id="Q1") + "\n",
             'Dec  5 05:14:52 mx spfmilter[811]: action=dns-failure name="dead.example" '
             'type=TXT error="timeout" detail="127.0.0.1: timed out"\n']
    summary, _ = read(lines)
    assert summary.temperror.counts == {"dead.example": 1, "slow.example": 1}
    assert summary.internal_errors.counts == {"envrcpt: RuntimeError": 1}
    assert summary.dns_failures.counts == {"dead.example": 1}
    assert summary.actions == {"defer": 1, "accept": 1, "tempfail": 1}


def test_skipped_clients_are_counted_as_not_checked():
    summary, _ = read([decision_line(action="accept", reason="skipped (whitelist)", identity=None,
                                     result=None, helo_result=None, reply=None)])
    assert summary.not_checked.counts == {"whitelist": 1}
    assert summary.results == {"helo": {}, "mailfrom": {}}


def test_json_is_one_summary_object(capsys, tmp_path):
    log = tmp_path / "mail.log"
    log.write_text(decision_line())
    assert report.main([str(log)], None, None, True) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["summary"] and out["summary"]["actions"] == {"reject": 1}


def test_text_names_the_period_and_the_refusals(capsys, tmp_path):
    log = tmp_path / "mail.log"
    log.write_text("2026-12-05 05:14:52,1 spfmilter[1]: " + decision_line("").lstrip())
    assert report.main([str(log)], None, None, False) == 0
    out = capsys.readouterr().out
    assert "Period: 2026-12-05 05:14:52 .. 2026-12-05 05:14:52" in out
    assert "Refused (reject): 1" in out and "example.com" in out


def test_a_bad_date_on_the_command_line_exits_2(capsys):
    assert report.main([], "tomorrow", None, False) == 2
    assert capsys.readouterr().err.strip() == \
        "spfmilter report: 'tomorrow' is not a date (YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS])"


@pytest.mark.parametrize("over", [{}, {"relay": "10.0.0.2", "dkim": "pass:example.com"},
                                  {"authorizes_all": "+all", "helo": HOSTILE[0]},
                                  {"identity": None, "result": None, "helo_result": None},
                                  {"reason": "mailfrom fail, TestOnly: would defer"}])
def test_the_fast_path_gives_the_generic_parse_record(over):
    line = decision_line(**over)
    start = report.message_start(line)
    done, fast = report.decision(line, start, None)
    assert done
    assert fast == report.record(report.fields(line, start), None)


def test_the_report_command_of_the_cli(capsys, tmp_path):
    from spfmilter import cli

    log = tmp_path / "mail.log"
    log.write_text(decision_line())
    assert cli.main(["report", "--json", "--since", "2000-01-01", str(log)]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["refused"]["count"] == 1
    assert cli.main(["report", str(tmp_path / "absent.log")]) == 1
    assert capsys.readouterr().err == \
        f"spfmilter report: {tmp_path / 'absent.log'}: No such file or directory\n"
