"""``python -m bench.acquire_release``: see the package's docstring."""

import sys

from bench.acquire_release.cli import main

if __name__ == "__main__":  # worker processes (spawned) import this module too
    sys.exit(main())
