"""``python -m editscope``: the same as the ``editscope`` command."""

import sys

from editscope.cli import main

sys.exit(main())
