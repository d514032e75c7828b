"""``python -m proxy``: the same as ``session-broker``."""

import sys

from proxy.cli import main

sys.exit(main())
