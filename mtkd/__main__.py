"""``python -m mtkd`` is the same as the ``mtkd`` command."""

import sys

from mtkd.cli import main

sys.exit(main())
