"""``python -m raykd.cache build`` — build a study's teacher-output cache (``raykd.ray_layer.cache.cli``)."""

import sys

from raykd.ray_layer.cache.cli import main

if __name__ == "__main__":
    sys.exit(main())
