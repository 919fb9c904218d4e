"""Allow ``python -m spfmilter`` where the console script is not on PATH."""

from spfmilter.cli import main

raise SystemExit(main())
