"""``python -m udm ...`` is the ``udm`` command (see :mod:`udm.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
