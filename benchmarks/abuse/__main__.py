"""``python -m benchmarks.abuse``: see ``benchmarks.abuse.cli``."""

import sys

from benchmarks.abuse.cli import main

sys.exit(main())
