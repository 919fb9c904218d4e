"""Organizational domains (RFC 7489 §3.2) from the Public Suffix List.

Why a library and the distribution's list: the list changes every week and
is long; a hand-written subset would align ``evil.co.uk`` with ``bank.co.uk``.
The data is Debian's ``publicsuffix`` package when present (kept current by
the distribution), else the copy the library ships.  The parser is
``publicsuffixlist`` (PyPI, maintained); on Debian 12, where only
``python3-publicsuffix2`` is packaged, that one reads the same file.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path

SYSTEM_LIST = Path("/usr/share/publicsuffix/public_suffix_list.dat")
_lock = threading.Lock()


def _load() -> Callable[[str], str | None]:
    source = SYSTEM_LIST if SYSTEM_LIST.is_file() else None
    try:
        from publicsuffixlist import PublicSuffixList
    except ImportError:  # Debian 12's packaged parser
        from publicsuffix2 import PublicSuffixList as Legacy

        legacy = Legacy(psl_file=str(source)) if source else Legacy()

        def sld(name: str) -> str | None:
            found: str | None = legacy.get_sld(name, strict=True)
            if found is None and name.count(".") >= 1:  # an unknown TLD is a public suffix
                found = ".".join(name.split(".")[-2:])   # (as publicsuffixlist has it)
            return found
        return sld
    if source is None:
        psl = PublicSuffixList()
    else:
        with open(source, "rb") as data:
            psl = PublicSuffixList(data)

    def private(name: str) -> str | None:
        found: str | None = psl.privatesuffix(name)
        return found
    return private


_registered: Callable[[str], str | None] | None = None


def preload() -> None:
    """Import the parser now and, when the list is the library's own copy, read it now.

    Why: the list is loaded on first use, by then possibly in a worker that has
    dropped to ``UserID`` and may not read the library's folder (a venv under
    /root).  Debian's list in /usr/share is readable by anyone and, being large,
    is still read on first use (only a DKIM rescue needs it)."""
    try:
        import publicsuffixlist  # noqa: F401
    except ImportError:
        import publicsuffix2  # noqa: F401
    if not SYSTEM_LIST.is_file():
        organizational_domain("example.com")


@functools.lru_cache(maxsize=4096)
def organizational_domain(name: str) -> str:
    """The registered domain under its public suffix (``mail.bank.example`` ->
    ``bank.example``); the name itself when it is a public suffix or not a name."""
    global _registered
    if _registered is None:
        with _lock:
            if _registered is None:
                _registered = _load()
    name = name.strip().rstrip(".").lower()
    return _registered(name) or name
