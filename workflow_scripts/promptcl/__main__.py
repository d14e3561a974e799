"""Command line: ``python -m promptcl show PATH``, ``power [RESULTS]`` and ``verify [RESULTS]``."""

import sys

from promptcl.show import main

sys.exit(main())
