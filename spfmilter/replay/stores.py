"""Messages out of a mail store, one at a time: mbox (also gzip'd), Maildir, .eml files.

Why not the standard library's ``mailbox.mbox``: before it gives the first
message it scans the whole file and keeps every message's offsets (memory
grows with the store), and it needs a file it can seek in, which a gzip
stream is not.  An mbox is read here line by line, plain or gzip'd alike,
and only the message being read is held.  A Maildir's file names are listed
(sorted, so the output order is stable) and each file is read when its turn
comes.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

#: Largest message kept whole; beyond it the message is read to its end and
#: reported too large, so a corrupt mbox without From_ lines cannot fill memory.
MAX_MESSAGE = 64 * 1024 * 1024

_FROM_QUOTED = re.compile(rb"^>+From ")


class StoreError(Exception):
    """A store that cannot be read (the message names the path)."""


@dataclass(frozen=True)
class Message:
    source: str          # path, with ":N" (1-based) for a message inside an mbox
    raw: bytes | None    # None: larger than MAX_MESSAGE
    note: str = ""


def _mbox(fp: Iterable[bytes], path: str) -> Iterator[Message]:
    """mboxrd/mboxo: a message starts at a "From " line at the start of the file or
    after an empty line; ">From " lines in it lose one '>'."""
    lines: list[bytes] = []
    size = 0
    number = 0
    previous_blank = True
    started = False

    def done() -> Message:
        if lines and lines[-1] in (b"\n", b"\r\n"):   # the separator before the next From_
            lines.pop()
        return Message(f"{path}:{number}", b"".join(lines) if size <= MAX_MESSAGE else None)

    for line in fp:
        if line.startswith(b"From ") and previous_blank:
            if started:
                yield done()
            started, number, size = True, number + 1, 0
            lines = []
            previous_blank = False
            continue
        previous_blank = line in (b"\n", b"\r\n")
        if not started:
            if line.strip():
                raise StoreError(f"{path}: not an mbox (no From_ line before the first message)")
            continue
        if _FROM_QUOTED.match(line):
            line = line[1:]
        size += len(line)
        if size <= MAX_MESSAGE:
            lines.append(line)
        elif lines:
            lines = []
    if started:
        yield done()


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fp:
        return fp.read(2) == b"\x1f\x8b"


def _maildir(path: str) -> Iterator[Message]:
    names = []
    for sub in ("new", "cur"):
        folder = os.path.join(path, sub)
        names += sorted(os.path.join(folder, n) for n in os.listdir(folder)
                        if not n.startswith("."))
    for name in names:
        yield _file(name)


def _file(path: str) -> Message:
    try:
        with open(path, "rb") as fp:
            raw = fp.read(MAX_MESSAGE + 1)
    except FileNotFoundError:   # a Maildir's message moved (cur/ <-> new/) meanwhile
        return Message(path, b"", note="vanished while reading")
    return Message(path, raw if len(raw) <= MAX_MESSAGE else None)


def read(path: str) -> Iterator[Message]:
    """Every message at ``path``: a Maildir folder, an mbox file or a single message
    file (either gzip'd or not).  Raises StoreError for a path that is none of these."""
    try:
        if os.path.isdir(path):
            if not all(os.path.isdir(os.path.join(path, s)) for s in ("cur", "new")):
                raise StoreError(f"{path}: a folder that is not a Maildir (no cur/ and new/)")
            yield from _maildir(path)
            return
        if _is_gzip(path):
            with gzip.open(path, "rb") as gz:
                if gz.peek(5)[:5] == b"From ":
                    yield from _mbox(gz, path)
                else:                            # one message, gzip'd
                    raw = gz.read(MAX_MESSAGE + 1)
                    yield Message(path, raw if len(raw) <= MAX_MESSAGE else None)
            return
        with open(path, "rb") as fp:
            start = fp.read(5)
            if start == b"From ":
                fp.seek(0)
                yield from _mbox(fp, path)
                return
        yield _file(path)
    except (OSError, EOFError, zlib.error) as exc:
        raise StoreError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
