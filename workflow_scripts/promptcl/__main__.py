"""Command line: ``python -m promptcl show PATH`` and ``python -m promptcl power [RESULTS]``."""

import sys

from .show import main

sys.exit(main())
