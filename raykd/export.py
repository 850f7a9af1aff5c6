"""``python -m raykd.export`` — kept for scripts that call it; the code is ``raykd.results.export`` (also ``python -m raykd export``)."""

import sys

from raykd.results.export import main

if __name__ == "__main__":
    sys.exit(main())
