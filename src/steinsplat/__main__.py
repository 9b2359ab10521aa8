"""`python -m steinsplat ...` runs the command line (the same as the `steinsplat` script)."""

import sys

from .cli import main

sys.exit(main())
