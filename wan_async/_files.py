"""Files that hold credentials: the journal and the CLI's results hold signed video URLs,
each a bearer credential for 24 hours, so only their owner may read them (mode 0600)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO

#: Read and write for the owner only.
PRIVATE = 0o600


def open_private_append(path: Path) -> IO[bytes]:
    """Open ``path`` for reading and appending, created 0600; an existing file that others
    could read is made 0600 too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, PRIVATE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, PRIVATE)
        return os.fdopen(fd, "a+b")
    except BaseException:
        os.close(fd)
        raise


def replace_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` at once (never half-written), mode 0600: through a
    temporary file of a name no other writer uses, renamed into place."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
