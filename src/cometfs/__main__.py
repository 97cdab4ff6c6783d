"""`python -m cometfs`: the same command line as the `cometfs` script."""

import sys

from cometfs.cli import main

sys.exit(main())
