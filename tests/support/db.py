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
