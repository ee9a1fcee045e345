"""Opening the database (SQLite file or PostgreSQL) and keeping its schema current.

:class:`Store` opens a database by its SQLAlchemy URL and hands out units of work
(``session()``) that commit on success and turn database errors into one-line
:class:`StoreError` / :class:`RowRefused` (never the SQL or its parameters: they hold mail
text). A SQLite file is created private (0600, directory 0700) and used in WAL mode.

Schema versions are kept in ``schema_version``. A new database is created at the current
version; an older one is brought forward by the functions in ``MIGRATIONS`` (one per
version step, each run in its own transaction). A database written by a newer inbox-guard
is refused rather than guessed at.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import Session, SQLModel

from guard.errors import GuardError, Kind
from guard.store.coordination import take_xact_lock
from guard.store.models import (
    AccountLease,
    Digest,
    DraftRecord,
    Evidence,
    Feedback,
    FeedbackMove,
    Replica,
    ScanRun,
    SchemaVersion,
    StoredMessage,
    ThreadReport,
)
from guard.store.values import utcnow

SCHEMA_VERSION = 6


class StoreError(GuardError):
    """The store cannot be opened or written; the message says why in one line."""

    kind = Kind.STORE


class RowRefused(StoreError):
    """The database refused what one unit of work wrote (a value it does not accept, a
    constraint), not the store as a whole: the scan retries message by message and records
    the one refused as unreadable. The message names only the error class, never the SQL
    or its parameters (they hold mail text)."""

    def __init__(self, error_class: str) -> None:
        super().__init__(f"the store refused a row: {error_class}")
        self.error_class = error_class


# --------------------------------------------------------------------------- migrations

# MIGRATIONS[n] brings a database from version n to n + 1.
Migration = Callable[[Connection], None]


def _v1_to_v2(conn: Connection) -> None:
    """v2 adds the digest, evidence and draft tables and the indexes that keep a poll's
    cost independent of the mailbox size (pending labels, scan runs)."""
    SQLModel.metadata.create_all(
        conn,
        tables=[Digest.__table__, Evidence.__table__, DraftRecord.__table__],  # type: ignore[attr-defined]
        checkfirst=True,
    )
    for index in (
        *StoredMessage.__table__.indexes,  # type: ignore[attr-defined]
        *ScanRun.__table__.indexes,  # type: ignore[attr-defined]
    ):
        index.create(conn, checkfirst=True)
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_message_label_pending"))


def _v2_to_v3(conn: Connection) -> None:
    """v3 records which mailbox (user, host, port) a folder's state belongs to, so an
    account pointed at another mailbox is not taken for a UIDVALIDITY change."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("folder_state")}
    if "mailbox" not in columns:
        conn.execute(sa.text("ALTER TABLE folder_state ADD COLUMN mailbox TEXT"))


def _v3_to_v4(conn: Connection) -> None:
    """v4 keeps the user's feedback (threads marked safe or reported from the mail client)
    and the write-ahead record of putting a message back from a feedback folder."""
    SQLModel.metadata.create_all(
        conn,
        tables=[Feedback.__table__, FeedbackMove.__table__],  # type: ignore[attr-defined]
        checkfirst=True,
    )
    columns = {c["name"] for c in sa.inspect(conn).get_columns("thread")}
    added = {
        "safe_categories": "TEXT NOT NULL DEFAULT ''",
        "marked_safe": "BOOLEAN NOT NULL DEFAULT FALSE",
        "reported": "BOOLEAN NOT NULL DEFAULT FALSE",
    }
    for name, ddl in added.items():
        if name not in columns:
            conn.execute(sa.text(f"ALTER TABLE thread ADD COLUMN {name} {ddl}"))


def _v4_to_v5(conn: Connection) -> None:
    """v5 adds the tables several daemons on one PostgreSQL store share accounts by
    (``account_lease``, ``replica``; see ``guard.store.coordination``)."""
    SQLModel.metadata.create_all(
        conn,
        tables=[AccountLease.__table__, Replica.__table__],  # type: ignore[attr-defined]
        checkfirst=True,
    )


def _v5_to_v6(conn: Connection) -> None:
    """v6 follows a thread up the escalation ladder: the stance of the freelancer's own
    mail, the thread's stage, one draft per thread *and rung* (the draft table is rebuilt
    with the rung in its key; every earlier draft is rung 1) and the reports made."""
    inspector = sa.inspect(conn)
    for table, column, ddl in (
        ("message", "stance", "VARCHAR(10) NOT NULL DEFAULT ''"),
        ("thread", "stage", "VARCHAR(20) NOT NULL DEFAULT ''"),
    ):
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))
    if "rung" not in {c["name"] for c in inspector.get_columns("draft")}:
        names = ("account", "thread_id", "message_id", "folder", "language", "done", "created_at")
        kept = [
            dict(zip(names, row, strict=True))
            for row in conn.execute(sa.text(f"SELECT {', '.join(names)} FROM draft"))
        ]
        conn.execute(sa.text("DROP TABLE draft"))
        DraftRecord.__table__.create(conn)  # type: ignore[attr-defined]
        if kept:
            conn.execute(
                sa.insert(DraftRecord.__table__),  # type: ignore[attr-defined]
                [{**row, "rung": 1} for row in kept],
            )
    report_table = ThreadReport.__table__  # type: ignore[attr-defined]
    SQLModel.metadata.create_all(conn, tables=[report_table], checkfirst=True)


MIGRATIONS: dict[int, Migration] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
    5: _v5_to_v6,
}


def _current_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table("schema_version"):
        return None
    value = conn.execute(sa.text("SELECT MAX(version) FROM schema_version")).scalar()
    return int(value) if value is not None else None


def migrate(engine: Engine, target: int = SCHEMA_VERSION) -> int:
    """Create or upgrade the schema; returns the version the database is at.

    Each step is one transaction that first takes the schema lock (a PostgreSQL advisory
    lock; SQLite serialises writers itself) and reads the version again under it, so any
    number of daemons may start at once on an empty or older database: one creates or
    migrates, the others wait for it and then find the work done."""
    while True:
        with engine.begin() as conn:
            take_xact_lock(conn, "inbox-guard schema")
            version = _current_version(conn)
            if version is None:
                tables = sa.inspect(conn).get_table_names()
                if tables:
                    raise StoreError(
                        "the database has tables but no schema_version: not an inbox-guard store"
                    )
                SQLModel.metadata.create_all(conn)
                conn.execute(
                    sa.insert(SchemaVersion.__table__).values(version=target, applied_at=utcnow())  # type: ignore[attr-defined]
                )
                return target
            if version > target:
                raise StoreError(
                    f"the database is at schema version {version}, newer than this inbox-guard "
                    f"understands ({target}); upgrade inbox-guard"
                )
            if version == target:
                return version
            step = MIGRATIONS.get(version)
            if step is None:
                raise StoreError(f"no migration from schema version {version}")
            step(conn)
            conn.execute(
                sa.insert(SchemaVersion.__table__).values(  # type: ignore[attr-defined]
                    version=version + 1, applied_at=utcnow()
                )
            )


# --------------------------------------------------------------------------- opening


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL, or None (memory, other databases)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _prepare_sqlite_file(path: Path) -> None:
    """Create the directory (0700) and the file (0600) before SQLite does, so no one
    else can ever read the findings; tighten an existing file that is too open."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA busy_timeout = 10000")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


def describe_error(exc: BaseException) -> str:
    """One line for a database error, without SQL or parameters (they can hold mail text)."""
    if isinstance(exc, SQLAlchemyError) and getattr(exc, "orig", None) is not None:
        text = str(exc.orig)  # type: ignore[attr-defined]
    else:
        text = str(exc)
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return line[:300]


def error_class(exc: BaseException) -> str:
    """The error's class, and the driver's underneath when it says more (``DataError:
    StringDataRightTruncation``): names only, never a message (it can quote the data)."""
    name = type(exc).__name__
    orig = getattr(exc, "orig", None)
    if orig is not None and type(orig).__name__ != name:
        return f"{name}: {type(orig).__name__}"
    return name


def _refuses_a_row(exc: OperationalError) -> bool:
    """An OperationalError about the data written, not the store: PostgreSQL's class 54
    (program limit exceeded, e.g. an index entry too big)."""
    state = getattr(exc.orig, "sqlstate", None)
    return isinstance(state, str) and state.startswith("54")


class Store:
    """An open store. ``session()`` gives a unit of work that commits on success."""

    def __init__(self, url: str, pool: int | None = None) -> None:
        """``pool``: connections kept to a database server (SQLAlchemy's default when None;
        ignored for SQLite)."""
        self.url = url
        path = sqlite_path(url)
        try:
            if path is not None:
                _prepare_sqlite_file(path)
            options: dict[str, Any] = {}
            if pool is not None and path is None and not url.startswith("sqlite"):
                options = {"pool_size": pool, "max_overflow": pool}
            self.engine = sa.create_engine(url, **options)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _on_sqlite_connect)
            self.version = migrate(self.engine)
        except StoreError:
            raise
        except (OSError, SQLAlchemyError) as exc:
            where = str(path) if path is not None else _safe_url(url)
            raise StoreError(f"cannot open the store {where}: {describe_error(exc)}") from exc

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = Session(self.engine, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except OperationalError as exc:
            session.rollback()
            if _refuses_a_row(exc):
                raise RowRefused(error_class(exc)) from None
            raise StoreError(f"database error: {describe_error(exc)}") from exc
        except (SQLAlchemyError, UnicodeError, OverflowError) as exc:
            # A value or constraint the database refused (DataError, IntegrityError, a
            # driver's encoding error ...): about what this unit wrote, not the store.
            # ``from None``: the chained error's text holds the SQL and its parameters.
            session.rollback()
            raise RowRefused(error_class(exc)) from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


def _safe_url(url: str) -> str:
    """A database URL with its password hidden."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable database URL)"
