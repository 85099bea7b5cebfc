"""Run the npsam command line: `python -m npsam ...` is the same as the `npsam` console script."""

import sys

from npsam.cli import main

if __name__ == "__main__":
    sys.exit(main())
