"""``python -m raykd.tune`` — the study command (``raykd.ray_layer.tune``; in Python: ``raykd.run_study``)."""

import sys

from raykd.ray_layer.tune import main

if __name__ == "__main__":
    sys.exit(main())
