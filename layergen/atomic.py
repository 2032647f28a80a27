"""Small files written atomically: a temporary file beside the target, synced, then renamed."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through ``.{name}.tmp`` in its directory, synced to disk and
    renamed onto ``path`` (``os.replace``).

    A kill at any moment leaves the previous file or the new one, whole; a killed write's
    temporary is replaced by the next write.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
