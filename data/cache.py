"""Writing a cache folder all at once: readers never see half of one, and two processes preparing the
same cache at the same time (simulated nodes, parallel jobs) cannot corrupt it."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def written_atomically(root: Path) -> Iterator[Path]:
    """Yield a staging folder beside `root`; when the block succeeds it becomes `root` in one rename.
    If another process finished the same cache first, theirs is kept (it is identical)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root.parent))
    try:
        yield staging
        try:
            os.replace(staging, root)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
