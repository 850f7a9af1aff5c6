"""``python -m raykd.cache build / import / export`` — build a study's teacher-output cache, or bring a teacher's top-k log-probs in from another project's layout and out again (``raykd.ray_layer.cache.cli``)."""

import sys

from raykd.ray_layer.cache.cli import main

if __name__ == "__main__":
    sys.exit(main())
