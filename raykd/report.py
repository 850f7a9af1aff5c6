"""``python -m raykd.report`` and ``import raykd.report`` — kept for scripts that use them; the code is
``raykd.results.report`` (also ``python -m raykd report``)."""

import sys

from raykd.results.report import *  # noqa: F401,F403 (its public names, as before the move)
from raykd.results.report import main

if __name__ == "__main__":
    sys.exit(main())
