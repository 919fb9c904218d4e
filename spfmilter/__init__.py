"""spfmilter: an SPF (RFC 7208) mail filter for Postfix and Sendmail."""

__version__ = "0.1.0"
