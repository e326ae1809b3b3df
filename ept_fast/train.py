"""``python -m ept_fast.train`` (what ``torchrun -m`` launches): the same as ``ept-fast train``."""

import sys

from .cli import parse_train_args as parse_args
from .cli import train_main as main

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
