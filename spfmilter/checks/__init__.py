"""The checks spfmilter runs (SPF through pyspf), each behind spfmilter's resolver."""
