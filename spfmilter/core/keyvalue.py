"""key=value text: the form of every log line, and of replay's lines beside them.

Why in the core: the log observer writes it and ``spfmilter replay`` prints
its records in it, and a front end may not import the log (it reports
through the engine); the format is pure text over the core's ``clean``, so
both take it from here.  ``spfmilter report`` reads it back (its pattern
mirrors the quoting below).
"""

from __future__ import annotations

import re

from spfmilter.core.headers import clean

_NEEDS_QUOTES = re.compile(r'[ "=;]')


def kv(**fields: object) -> str:
    """key=value pairs; values with spaces, quotes or '=' are quoted."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = value if type(value) is str else str(value)
        if len(text) > 512 or not (text.isascii() and text.isprintable()):
            text = clean(text, 512)   # (printable ASCII within the bound it leaves as it is)
        if not text or _NEEDS_QUOTES.search(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)
