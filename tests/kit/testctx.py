"""pymilter's TestCtx for tests that drive SPFMilter through pymilter's own test
harness (its callbacks, as libmilter calls them), recording header edits."""

from __future__ import annotations

import Milter
from Milter.testctx import TestCtx

_NO_REPLY = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT
             | Milter.P_NR_DATA | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY
             | Milter.P_NR_HDR)


class RecordingCtx(TestCtx):  # type: ignore[misc]  # pymilter has no type hints
    """TestCtx that keeps header edits with their positions, as libmilter would get them."""

    def __init__(self) -> None:
        super().__init__()
        self.header_ops: list[tuple[str, str, str, int]] = []

    def _negotiate(self) -> int:
        # TestCtx offers every no-reply flag but then treats NOREPLY as a refusal;
        # an MTA that waits for replies is what we want to test.
        rc = super()._negotiate()
        if self._priv is not None:
            self._priv._protocol &= ~_NO_REPLY
        self._protocol &= ~_NO_REPLY
        return int(rc)

    def addheader(self, field: str, value: str, idx: int) -> None:
        # With SMFIP_HDR_LEADSPC the value brings its own space after the colon;
        # recorded as the MTA writes it.
        if self._priv is not None and self._priv._protocol & Milter.P_HDR_LEADSPC:
            value = value[1:] if value.startswith(" ") else value
        super().addheader(field, value, idx)
        self.header_ops.append(("insert" if idx >= 0 else "add", field, value, idx))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        super().chgheader(field, idx, value)
        self.header_ops.append(("delete" if value == "" else "change", field, value, idx))
