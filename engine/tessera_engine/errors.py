"""Errors about the user's files (a changed checkpoint, a garbage weights file, a full disk):
reported as their message alone, naming the file, without a traceback."""

from __future__ import annotations

import errno
import shutil


class FileProblem(ValueError):
    """A problem with a file the message names; the supervisor shows the message only."""

    user_facing = True


def is_disk_full(e: BaseException, folder: str | None = None) -> bool:
    """ENOSPC, or torch's short-write message ("unexpected pos") when the disk has no room."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    text = str(e)
    if "No space left on device" in text:
        return True
    if "unexpected pos" in text and folder is not None:
        try:
            return shutil.disk_usage(folder).free < (64 << 20)
        except OSError:
            return False
    return False
