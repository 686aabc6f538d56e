"""`python -m iarmem` (also what torchrun runs: `torchrun --nproc_per_node N -m iarmem localize ...`)."""

import sys

from iarmem.cli import main

sys.exit(main())
