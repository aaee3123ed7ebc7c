"""`python -m naclip ...` (also what `torchrun -m naclip eval ...` runs)."""

import sys

from naclip.cli import main

sys.exit(main())
