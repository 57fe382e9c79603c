"""``python -m slimyolo`` (what ``torchrun -m slimyolo train ...`` runs)."""

import sys

from slimyolo.cli import main

if __name__ == "__main__":  # not when a spawned process (bench --remote --processes) imports the parent's main
    sys.exit(main())
