"""Command line: ``python -m promptcl show PATH``."""

import sys

from .show import main

sys.exit(main())
