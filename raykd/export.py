"""``python -m raykd.export`` and ``import raykd.export`` — kept for scripts that use them; the code is
``raykd.results.export`` (also ``python -m raykd export``)."""

import sys

from raykd.results.export import *  # noqa: F401,F403 (its public names, as before the move)
from raykd.results.export import main

if __name__ == "__main__":
    sys.exit(main())
