"""`python -m seedvr restore INPUT OUTPUT [options]`."""

import sys

from seedvr.cli import main

if __name__ == "__main__":
    sys.exit(main())
