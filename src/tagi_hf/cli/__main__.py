"""`python -m tagi_hf.cli ...` (what `accelerate launch -m` and `torchrun -m` run)."""

import sys

from .main import main

sys.exit(main())
