"""``python -m slimyolo`` (what ``torchrun -m slimyolo train ...`` runs)."""

import sys

from slimyolo.cli import main

sys.exit(main())
