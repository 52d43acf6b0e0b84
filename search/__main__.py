"""`python -m search ...` is the `patchnas` command (workers and torchrun launch it so)."""

import sys

from search.cli import main

sys.exit(main())
