"""Reading a store back with SQL, whatever its database (SQLite file or PostgreSQL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows ``sql`` selects from the database at ``url`` (a connection of its own)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def db_rows(config: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows ``sql`` (``?`` parameters) selects from the SQLite store that
    ``write_config`` puts beside ``config`` (``guard.sqlite3``)."""
    con = sqlite3.connect(config.parent / "guard.sqlite3")
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


# What each schema version added, undone: ``as_version(url, n)`` turns a current store
# into one as version ``n`` wrote it (data of the tables both have is kept), so that the
# migrations from n can be tested in place on a real database.
_V5_DRAFT = (
    "CREATE TABLE draft (account VARCHAR(200) NOT NULL, thread_id VARCHAR(120) NOT NULL, "
    "message_id VARCHAR(998) NOT NULL, folder VARCHAR(500) NOT NULL, "
    "language VARCHAR(5) NOT NULL, done BOOLEAN NOT NULL, created_at TIMESTAMP NOT NULL, "
    "PRIMARY KEY (account, thread_id))"
)
_UNDO: dict[int, list[str]] = {
    6: [  # back to v5
        "DROP TABLE thread_report",
        "ALTER TABLE message DROP COLUMN stance",
        "ALTER TABLE thread DROP COLUMN stage",
        "CREATE TABLE draft_keep AS SELECT account, thread_id, message_id, folder, language, "
        "done, created_at FROM draft",
        "DROP TABLE draft",
        _V5_DRAFT,
        "INSERT INTO draft SELECT * FROM draft_keep",
        "DROP TABLE draft_keep",
    ],
    5: ["DROP TABLE account_lease", "DROP TABLE replica"],
    4: [
        "DROP TABLE feedback_move",
        "DROP TABLE feedback",
        "ALTER TABLE thread DROP COLUMN safe_categories",
        "ALTER TABLE thread DROP COLUMN marked_safe",
        "ALTER TABLE thread DROP COLUMN reported",
    ],
    3: ["ALTER TABLE folder_state DROP COLUMN mailbox"],
}


def as_version(url: str, version: int) -> None:
    """Make the (current) store at ``url`` a store of schema ``version``."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            current = conn.execute(sa.text("SELECT MAX(version) FROM schema_version")).scalar()
            for step in range(int(current), version, -1):
                for sql in _UNDO[step]:
                    conn.execute(sa.text(sql))
            conn.execute(sa.text("DELETE FROM schema_version"))
            conn.execute(
                sa.text("INSERT INTO schema_version (version, applied_at) VALUES (:v, :at)"),
                {"v": version, "at": "2026-11-01 00:00:00"},
            )
    finally:
        engine.dispose()
