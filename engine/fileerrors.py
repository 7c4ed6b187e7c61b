"""One sentence for a file-system error (unwritable folder, a file in the way, a full disk), naming the
path and the reason instead of a traceback. Torch-free: CLI, store and pages use it."""

from __future__ import annotations

import errno

_REASONS = {
    errno.EACCES: "permission denied: pick a folder you may write to",
    errno.EPERM: "operation not permitted: pick a folder you may write to",
    errno.EROFS: "the file system is read-only: pick another folder",
    errno.ENOSPC: "the disk is full: free some space or pick another disk",
    errno.ENOTDIR: "a file is in the way where a folder should be: pick another path",
    errno.EEXIST: "a file is in the way where a folder should be: pick another path",
    errno.EISDIR: "it is a folder, not a file: name a file",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def file_error_message(exc: OSError, action: str) -> str:
    """'cannot write data/out.csv (/tmp/x: a file is in the way …)': ``action`` says what was being done."""
    where = exc.filename if exc.filename is not None else "the file"
    reason = _REASONS.get(exc.errno or -1, exc.strerror or str(exc))
    return f"cannot {action}: {where}: {reason}"
