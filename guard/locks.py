"""File locks: one run at a time of a piece of work (a scan, a digest) per store and account.

An advisory ``flock`` on a small 0600 file beside the SQLite database (or in the state
directory when the store is a server). It is refused, never waited for, when another
process holds it, and released by the kernel when the holder dies, so a crash never
leaves a stale lock behind.

Imports only ``guard.errors``: every layer may use it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from guard.errors import GuardError

__all__ = ["exclusive_lock", "lock_file"]

log = logging.getLogger(__name__)


def lock_file(db: Path | None, state_dir: Path, account: str, purpose: str) -> Path:
    """Where the lock of ``purpose`` ("scan", "digest") for ``account`` is:
    ``.<db name>.<account>.<purpose>-lock`` beside the SQLite file ``db``, or
    ``.store.<account>.<purpose>-lock`` in ``state_dir`` when the store is not a file.
    Characters of the account name other than letters, digits, "_", "." and "-" become "_"."""
    base = db.parent if db is not None else state_dir
    stem = db.name if db is not None else "store"
    safe_account = re.sub(r"[^A-Za-z0-9_.-]", "_", account)
    return base / f".{stem}.{safe_account}.{purpose}-lock"


@contextmanager
def exclusive_lock(
    path: Path | None,
    busy: Callable[[Path], GuardError],
    *,
    required: bool = True,
    what: str = "lock",
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the ``with`` block (``None``: no lock).

    When another process holds it, raises ``busy(path)`` (the caller's own error, one
    line) at once. The lock file and its folder (0700) are created when missing; when
    that is impossible, the ``OSError`` is raised, or, with ``required=False``, a warning
    naming ``what`` is logged and the block runs without a lock.
    """
    if path is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:
        if required:
            raise
        log.warning("%s %s unavailable (%s); not locking", what, path, exc.strerror)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(path) from None
        yield
    finally:
        os.close(fd)
