"""``spfmilter report``: what spfmilter's own log says, summarised the way pflogsumm
summarises Postfix's.

Why a reader of the log and not of a database: the decision lines are already
on every host that runs spfmilter (syslog, the journal, rotated files), so an
administrator running ``TestOnly = 0`` gets the evidence for switching refusal
on without setting anything up.

Input: syslog files (RFC 3164 ``Dec  5 05:14:52 host spfmilter[811]: ...`` or
RFC 3339 stamps), spfmilter's own stderr/file format, ``journalctl -o short``
(and ``short-iso``, ``short-precise``) and ``journalctl -o cat`` (bare
messages, no time), plain or gzip'd (found by its magic, so ``.gz`` and
``.1`` alike), or standard input.  Only ``spfmilter`` lines whose message
starts with ``action=`` are read; every other line is skipped on a cheap test
first, since a mail log is mostly Postfix's.

Values come from SMTP clients, quoted by :func:`spfmilter.core.keyvalue.kv`: the pattern
that splits a line has no nested repetition, so a hostile value cannot make it
backtrack, and a line cut short (syslog truncates) still parses what it holds.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import re
import sys
from collections.abc import Iterable, Iterator
from typing import IO

from spfmilter.summary import Record, Summary

# key=value: a quoted value is '"' (anything but '"' and '\', or '\' + any char)* '"',
# written unrolled so each character has one way to match; a bare one has no space or '"'.
_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_BARE = r'[^ "\n]*'
_VALUE = f"(?:{_QUOTED}|{_BARE})"
# A key starts a word: without the look-behind, a long run of word characters with no
# '=' (a hostile value left unquoted by a cut line) would be rescanned from each of its
# characters, quadratic in its length.
_PAIR = re.compile(rf"(?<!\w)(\w+)=({_VALUE})")
# The decision line's keys up to ``relay`` in the order log.decision() writes them, in
# one match: the fast path (a generic split costs several times more).  It must end
# where a known later key starts; any other line (a key added in between, a line cut
# short) goes the generic way, so the fast path can only be faster, never different.
_DECISION = re.compile(
    rf"action=({_BARE})(?: reason=({_VALUE}))?(?: identity=({_BARE}))?(?: result=({_BARE}))?"
    rf"(?: helo_result=({_BARE}))?(?: authorizes_all={_VALUE})?(?: client_ip=({_VALUE}))?"
    rf"(?: helo=({_VALUE}))?(?: envelope_from=({_VALUE}))?(?: relay=({_VALUE}))?"
    r"(?= (?:dkim|rcpt|receiver|queue_id|mta|daemon|via|reply)=|\n|$)")
_ESCAPE = re.compile(r"\\(.)")
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_DECISIONS = frozenset({"accept", "reject", "defer"})
_HELD = ", held for DKIM_Rescue"
_RELAY_WAIT = "trusted relay: SPF at end of headers"
_WOULD = ", TestOnly: would "
_CACHE = 4096


class ReportError(Exception):
    """Input that cannot be read: one line for the administrator."""


def value(raw: str) -> str:
    """A value as kv() wrote it, unquoted."""
    if raw[:1] == '"':  # only a complete quoted value starts with one
        raw = raw[1:-1]
        if "\\" in raw:
            raw = _ESCAPE.sub(r"\1", raw)
    return raw


def fields(line: str, start: int = 0) -> dict[str, str]:
    """The key=value pairs of a line from ``start``, values unquoted."""
    return {k: value(v) for k, v in _PAIR.findall(line, start)}


def message_start(line: str) -> int:
    """Where spfmilter's message starts in a log line (at ``action=``), or -1 when the
    line is not one of spfmilter's: the tag before it must be the first ``: `` of
    the line and name spfmilter, so another program's line that quotes
    ``spfmilter[1]: action=...`` in its own message is not taken for one."""
    i = line.find("action=")
    if i <= 0:
        return i
    if line[i - 2:i] != ": " or line.find(": ") != i - 2:
        return -1
    tag = line.rfind(" ", 0, i - 2)
    return i if line.startswith("spfmilter", tag + 1) else -1


class Clock:
    """The time of a log line, or None (``journalctl -o cat``).  RFC 3164 stamps have
    no year: the current one, or the previous when that would put the line more
    than a day in the future (a log that spans New Year).  Times are local and
    naive, as syslog writes them; a stamp with an offset is converted to local."""

    def __init__(self, now: dt.datetime | None = None) -> None:
        self.now = now or dt.datetime.now()
        self._cache: dict[str, dt.datetime | None] = {}
        self._last_key = ""
        self._last: dt.datetime | None = None

    def __call__(self, line: str) -> dt.datetime | None:
        if line[:3] in _MONTHS:
            key = line[:15]
        elif line[:4].isdigit() and line[4:5] == "-":
            key = line[:line.find(" ", 11 if line[10:11] == " " else 0)]
        else:
            return None
        if key == self._last_key:   # a busy log: many lines a second
            return self._last
        cache = self._cache
        if key in cache:
            self._last_key, self._last = key, cache[key]
            return self._last
        if len(cache) >= _CACHE:
            cache.clear()
        when = cache[key] = self._parse(key)
        self._last_key, self._last = key, when
        return when

    def _parse(self, key: str) -> dt.datetime | None:
        try:
            if key[:3] in _MONTHS:
                when = dt.datetime(self.now.year, _MONTHS[key[:3]], int(key[4:6]),
                                   int(key[7:9]), int(key[10:12]), int(key[13:15]))
                if when > self.now + dt.timedelta(days=1):
                    when = when.replace(year=when.year - 1)
                return when
            when = dt.datetime.fromisoformat(key.replace(",", "."))
        except ValueError:
            return None
        if when.tzinfo is not None:
            when = when.astimezone().replace(tzinfo=None)
        return when


def parse_date(text: str, *, end: bool = False) -> dt.datetime:
    """``--since``/``--until``: an ISO date or date and time, local unless it has an
    offset.  A bare date given as ``--until`` means the end of that day."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(f"{text!r} is not a date (YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS])") \
            from None
    if when.tzinfo is not None:
        when = when.astimezone().replace(tzinfo=None)
    if end and len(text.strip()) <= 10:
        when += dt.timedelta(days=1)
    return when


def record(f: dict[str, str], when: dt.datetime | None) -> Record | None:
    """A decision line's record; None when it is provisional (replaced at end of
    message by the line that decides)."""
    return _record(f.get("action", ""), f.get("reason", ""), f.get("identity"), f.get("result"),
                   f.get("helo_result"), f.get("client_ip", ""), f.get("helo", ""),
                   f.get("envelope_from", ""), f.get("relay"), when)


def _record(action: str, reason: str, identity: str | None, result: str | None,
            helo_result: str | None, client_ip: str, helo: str, sender: str,
            relay: str | None, when: dt.datetime | None) -> Record | None:
    if reason.endswith(_HELD) or reason == _RELAY_WAIT:
        return None
    return Record(
        action=action, helo_result=helo_result,
        mailfrom_result=result if identity == "mailfrom" else None,
        sender_domain=sender.rpartition("@")[2].rstrip(".").lower(),
        client_ip=client_ip, helo=helo,
        rescued=True if " rescued by DKIM d=" in reason else
        False if ", not rescued: " in reason else None,
        would=reason.rpartition(_WOULD)[2] if _WOULD in reason else None, relay=relay,
        skipped=reason[9:-1] if reason.startswith("skipped (") else None, time=when)


def decision(line: str, start: int, when: dt.datetime | None) -> tuple[bool, Record | None]:
    """The fast path: (True, the record) for a decision line in the current format
    (None: provisional); (False, None) when the line needs the generic parse."""
    m = _DECISION.match(line, start)
    if m is None:
        return False, None
    action, reason, identity, result, helo_result, client, helo, sender, relay = m.groups("")
    if action not in _DECISIONS:
        return False, None
    # most values are bare: unquote only those that are not
    return True, _record(action, value(reason) if reason[:1] == '"' else reason,
                         identity or None, result or None, helo_result or None,
                         value(client) if client[:1] == '"' else client,
                         value(helo) if helo[:1] == '"' else helo,
                         value(sender) if sender[:1] == '"' else sender,
                         value(relay) or None, when)


class Reader:
    """Feeds the lines of logs into a :class:`Summary`, within ``since``/``until``."""

    def __init__(self, summary: Summary, since: dt.datetime | None = None,
                 until: dt.datetime | None = None, clock: Clock | None = None) -> None:
        self.summary = summary
        self.since, self.until = since, until
        self.clock = clock or Clock()
        self.lines = 0
        self.undated_skipped = 0   # lines without a time while a period was asked for

    def feed(self, lines: Iterable[str]) -> None:
        summary, clock, since, until = self.summary, self.clock, self.since, self.until
        count = 0
        for line in lines:
            count += 1
            if "action=" not in line:
                continue
            start = message_start(line)
            if start < 0:
                continue
            when = clock(line) if start else None
            if since is not None or until is not None:
                if when is None:
                    self.undated_skipped += 1
                    continue
                if (since is not None and when < since) or (until is not None and when >= until):
                    continue
            done, fast = decision(line, start, when)
            if done:
                if fast is None:
                    summary.provisional += 1
                else:
                    summary.add(fast)
                continue
            f = fields(line, start)
            action = f.get("action")
            if action in _DECISIONS:
                r = record(f, when)
                if r is None:
                    summary.provisional += 1
                else:
                    summary.add(r)
            elif action == "tempfail":
                error = f.get("error", "")
                summary.add(Record(action="tempfail", time=when, error=(
                    f"{f.get('callback', '?')}: {error.partition(':')[0] or 'unknown'}")))
            elif action == "dns-failure":
                summary.dns_failure(f.get("name", ""), when)
        self.lines += count


def open_log(path: str) -> IO[str]:
    """A log file as text, gunzipped when it is gzip'd (whatever its name)."""
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror or exc}") from None
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), errors="replace")
    return io.TextIOWrapper(raw, errors="replace")


def _lines(fp: IO[str], name: str) -> Iterator[str]:
    try:
        yield from fp
    except (OSError, EOFError) as exc:   # a truncated or corrupt .gz: keep what was read
        raise ReportError(f"{name}: {exc}") from None


def run(paths: Iterable[str], summary: Summary, since: dt.datetime | None = None,
        until: dt.datetime | None = None) -> tuple[Reader, list[str]]:
    """Read every log (``-`` is standard input); the errors, one line each."""
    reader = Reader(summary, since, until)
    errors = []
    for path in paths:
        try:
            if path == "-":
                reader.feed(_lines(io.TextIOWrapper(sys.stdin.buffer, errors="replace"),
                                   "standard input"))
                continue
            with open_log(path) as fp:
                reader.feed(_lines(fp, path))
        except ReportError as exc:
            errors.append(str(exc))
    return reader, errors


def main(paths: list[str], since: str | None, until: str | None, as_json: bool) -> int:
    try:
        start = parse_date(since) if since else None
        end = parse_date(until, end=True) if until else None
    except ReportError as exc:
        print(f"spfmilter report: {exc}", file=sys.stderr)
        return 2
    summary = Summary()
    reader, errors = run(paths or ["-"], summary, start, end)
    for error in errors:
        print(f"spfmilter report: {error}", file=sys.stderr)
    if as_json:
        text = summary.json_text() + "\n"
    else:
        text = f"spfmilter report: {reader.lines:,} lines read" + (
            f"; {reader.undated_skipped:,} without a time skipped (--since/--until)"
            if reader.undated_skipped else "") + "\n" + summary.render()
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:   # `spfmilter report | head`: the reader has what it wanted
        sys.stdout = None  # no second error at exit
    return 1 if errors else 0
