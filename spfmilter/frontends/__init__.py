"""The protocol adapters (libmilter, the check command) around the pure core."""
