"""The pure part of spfmilter: what a message's facts and check results mean.

Nothing in this package talks to DNS, sockets, libmilter or pyspf; importing
it imports none of them (a test holds us to that).  Front ends collect facts
in their protocol, hand them to a :class:`~spfmilter.core.transaction.Transaction`,
give it the checkers to run, and translate its verdicts back.
"""
