"""Reading a store back with SQL, whatever its database (SQLite file or PostgreSQL)."""

from __future__ import annotations

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
