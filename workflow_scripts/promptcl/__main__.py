"""Command line: ``python -m promptcl show PATH``, ``power [RESULTS]``, ``verify [RESULTS]``
and ``config-reference [--check]``."""

import sys

from promptcl.show import main

sys.exit(main())
