"""``python -m pyro_gen ...`` is ``pyro-gen ...``; what ``torchrun --nproc_per_node N -m pyro_gen train CONFIG`` runs."""

import sys

from pyro_gen.cli import main

if __name__ == "__main__":
    sys.exit(main())
