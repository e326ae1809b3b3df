"""The ``ept-fast`` console script: ``ept-fast train [options]``."""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: ept-fast train [options]   (ept-fast train --help lists them)")
        return 0 if argv else 2
    if argv[0] != "train":
        print(f"ept-fast: unknown command {argv[0]!r}; the command is 'train'", file=sys.stderr)
        return 2
    from .train import main as train_main

    return train_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
