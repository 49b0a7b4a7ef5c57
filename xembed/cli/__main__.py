"""``python -m xembed.cli``: the same as the ``xembed`` command."""

import sys

from xembed.cli import main

sys.exit(main())
