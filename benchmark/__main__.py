"""``python -m energybench``: the ``energybench`` command."""

import sys

from energybench.cli import main

sys.exit(main())
