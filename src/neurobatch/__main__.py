"""``python -m neurobatch``: the command line."""

import sys

from neurobatch.cli import main

sys.exit(main())
