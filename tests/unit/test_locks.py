"""guard.locks: the one file-lock helper (digest runs today, scans next)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from guard.errors import GuardError, Kind
from guard.locks import exclusive_lock, lock_file


class Busy(GuardError):
    kind = Kind.BUSY


def busy(path: Path) -> Busy:
    return Busy(f"held: {path.name}")


def test_lock_file_sits_beside_the_database_or_in_the_state_directory(tmp_path: Path) -> None:
    db = tmp_path / "data" / "guard.sqlite3"
    assert lock_file(db, tmp_path / "state", "work", "scan") == (
        tmp_path / "data" / ".guard.sqlite3.work.scan-lock"
    )
    assert lock_file(None, tmp_path / "state", "a/b c", "digest") == (
        tmp_path / "state" / ".store.a_b_c.digest-lock"
    )


def test_a_second_holder_is_refused_at_once_and_the_lock_is_released(tmp_path: Path) -> None:
    path = tmp_path / "new" / ".x.lock"
    with exclusive_lock(path, busy):
        assert path.exists() and path.stat().st_mode & 0o777 == 0o600
        with pytest.raises(Busy, match=r"held: \.x\.lock"), exclusive_lock(path, busy):
            pass
    with exclusive_lock(path, busy):  # free again
        pass


def test_no_path_means_no_lock(tmp_path: Path) -> None:
    with exclusive_lock(None, busy), exclusive_lock(None, busy):
        pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_place_fails_unless_the_lock_is_optional(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    path = locked / ".x.lock"
    with pytest.raises(PermissionError), exclusive_lock(path, busy):
        pass
    ran = False
    with (
        caplog.at_level(logging.WARNING),
        exclusive_lock(path, busy, required=False, what="digest lock"),
    ):
        ran = True
    assert ran and not path.exists()
    assert f"digest lock {path} unavailable" in caplog.text
