"""``python -m raykd.report`` — kept for scripts that call it; the code is ``raykd.results.report`` (also ``python -m raykd report``)."""

import sys

from raykd.results.report import main

if __name__ == "__main__":
    sys.exit(main())
