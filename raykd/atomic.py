"""Atomic directory writes: build in a hidden sibling, rename into place, never leave half a result."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def replace_directory(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final`` by rename, replacing an existing ``final`` (old copy removed after)."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_directory(final: str | Path):
    """Yield a fresh temporary sibling of ``final``; when the block succeeds it replaces ``final``,
    when anything fails (or is interrupted) it is removed and ``final`` is left as it was."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
