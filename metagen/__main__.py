"""``python -m metagen ...``: the metagen command line (see metagen/cli.py)."""

import sys

from metagen.cli import main

sys.exit(main())
