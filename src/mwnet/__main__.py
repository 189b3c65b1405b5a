"""`python -m mwnet` behaves like the `mwnet` command."""

import sys

from mwnet.cli import main

sys.exit(main())
