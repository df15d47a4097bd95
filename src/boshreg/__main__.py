"""``python -m boshreg``: the same as the ``boshreg`` command."""

import sys

from boshreg.cli import main

sys.exit(main())
