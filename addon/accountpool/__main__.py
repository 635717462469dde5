"""`python -m accountpool`: the `accountpool` command without its console script."""

import sys

from accountpool.admin.cli import main

sys.exit(main())
