"""The SQLite (or PostgreSQL) store: tables and the queries the rest of the guard needs.

What lives here is data, not decisions: ``scan`` decides what to record and label,
``threads`` decides which thread a message belongs to. Times are stored as naive UTC.

Schema versions are kept in ``schema_version``. A new database is created at the current
version; an older one is brought forward by the functions in ``MIGRATIONS`` (one per
version step, each run in its own transaction). A database written by a newer inbox-guard
is refused rather than guessed at.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import NaiveDatetime
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, select

from guard.errors import GuardError, Kind

SCHEMA_VERSION = 3


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


# --------------------------------------------------------------------------- values

# What no column may hold: C0 controls, DEL, C1 controls; lone surrogates (not UTF-8).
_CONTROLS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_SUSPECT = re.compile(f"[\t\n\r{_CONTROLS}\ud800-\udfff]")
_SUSPECT_TEXT = re.compile(f"[\r{_CONTROLS}\ud800-\udfff]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_DROP = re.compile(f"[{_CONTROLS}]")
_LINE_BREAKS = re.compile("\r\n?")
_SPACES = re.compile("[\t\n\r]")
INDEX_VALUE_BYTES = 1000  # a string column in an index: at most this many UTF-8 bytes


def clean_text(
    value: str,
    *,
    length: int | None = None,
    multiline: bool = False,
    max_bytes: int | None = None,
) -> str:
    """``value`` as every database accepts it: lone surrogates replaced (U+FFFD), control
    characters removed (a one-line column turns tab, CR and LF into spaces; a text column
    keeps tab and LF, CR LF and a lone CR becoming LF), then cut to ``length`` characters
    and ``max_bytes`` UTF-8 bytes (whole characters only)."""
    suspect = _SUSPECT_TEXT if multiline else _SUSPECT
    if suspect.search(value) is not None:
        value = _SURROGATES.sub("\ufffd", value)
        value = _LINE_BREAKS.sub("\n", value) if multiline else _SPACES.sub(" ", value)
        value = _DROP.sub("", value)
    if length is not None and len(value) > length:
        value = value[:length]
    if max_bytes is not None and len(value) * 4 > max_bytes:
        data = value.encode("utf-8")
        if len(data) > max_bytes:
            value = data[:max_bytes].decode("utf-8", "ignore")
    return value


class CleanString(sa.types.TypeDecorator[str]):
    """VARCHAR(n) whose every bound value (insert, update, where) goes through
    :func:`clean_text`: one line, at most n characters (PostgreSQL refuses longer, SQLite
    would keep it), at most ``max_bytes`` bytes where the column is indexed."""

    impl = sa.String
    cache_ok = True

    def __init__(self, length: int | None = None, max_bytes: int | None = None) -> None:
        super().__init__(length)
        self.length = length
        self.max_bytes = max_bytes

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if not isinstance(value, str):
            return value
        return clean_text(value, length=self.length, max_bytes=self.max_bytes)

    def clean(self, value: str) -> str:
        return str(self.process_bind_param(value, None))


class CleanText(sa.types.TypeDecorator[str]):
    """TEXT whose every bound value goes through :func:`clean_text` (several lines)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if not isinstance(value, str):
            return value
        return clean_text(value, multiline=True)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def as_utc_naive(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        try:
            value = value.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # 9999-12-31 in a zone west of UTC: past datetime.max
            value = datetime.max if value.year > 1 else datetime.min
    return value


def iso_z(value: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with a Z, to the second; None stays None."""
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


# --------------------------------------------------------------------------- tables


class SchemaVersion(SQLModel, table=True):
    __tablename__ = "schema_version"

    version: int = Field(primary_key=True)
    applied_at: NaiveDatetime = Field(default_factory=utcnow)


class FolderState(SQLModel, table=True):
    """Where the last scan of one folder stopped."""

    __tablename__ = "folder_state"

    account: str = Field(primary_key=True, max_length=200)
    folder: str = Field(primary_key=True, max_length=500)
    uidvalidity: int
    last_uid: int = 0
    highest_modseq: int | None = None
    uidnext: int | None = None
    label_mode: str | None = Field(default=None, max_length=20)  # as resolved at last scan
    updated_at: NaiveDatetime = Field(default_factory=utcnow)
    # the mailbox these UIDs belong to, "username@host" (v3; None: recorded before)
    mailbox: str | None = Field(default=None, sa_type=sa.Text)


class StoredMessage(SQLModel, table=True):
    """One message copy in one folder, with the verdict the guard gave it."""

    __tablename__ = "message"
    __table_args__ = (
        sa.UniqueConstraint("account", "folder", "uidvalidity", "uid", name="uq_message_location"),
        sa.Index("ix_message_account_hash", "account", "folder", "content_hash"),
        sa.Index("ix_message_thread", "account", "thread_id"),
        sa.Index("ix_message_msgid", "account", "message_id"),
        sa.Index("ix_message_seen", "first_seen_at"),
        sa.Index("ix_message_pending", "account", "label_pending", "folder", "uid"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(max_length=200)
    folder: str = Field(max_length=500)
    uidvalidity: int = Field(sa_type=sa.BigInteger)
    uid: int = Field(sa_type=sa.BigInteger)
    direction: str = Field(default="in", max_length=3)  # "in", or "out" for the Sent folder
    message_id: str | None = Field(default=None, max_length=998)
    content_hash: str = Field(max_length=64)
    thread_id: str = Field(max_length=120)
    date: NaiveDatetime | None = None
    internal_date: NaiveDatetime | None = None
    sender: str = Field(default="", max_length=998)
    sender_name: str = Field(default="", max_length=998)
    recipients: str = Field(default="", sa_type=sa.Text)  # comma-separated addresses
    subject: str = Field(default="", sa_type=sa.Text)
    in_reply_to: str | None = Field(default=None, sa_type=sa.Text)
    references: str | None = Field(default=None, sa_type=sa.Text)
    size: int = 0
    risk: str = Field(default="none", max_length=6)
    score: float = 0.0
    categories: str = Field(default="", max_length=500)  # comma-separated
    notes: str = Field(default="", sa_type=sa.Text)  # what was skipped or unreadable
    labels: str = Field(default="", sa_type=sa.Text)  # label spellings written, "\n"-separated
    label_pending: bool = False  # the thread wants more labels (ix_message_pending)
    labelled_at: NaiveDatetime | None = None
    first_seen_at: NaiveDatetime = Field(default_factory=utcnow)

    @property
    def category_list(self) -> list[str]:
        return [c for c in self.categories.split(",") if c]

    @property
    def label_set(self) -> set[str]:
        return {x for x in self.labels.split("\n") if x}


class StoredFinding(SQLModel, table=True):
    __tablename__ = "finding"

    id: int | None = Field(default=None, primary_key=True)
    message_pk: int = Field(foreign_key="message.id", index=True, ondelete="CASCADE")
    rule: str = Field(max_length=200)
    category: str = Field(max_length=40)
    score: float
    where: str = Field(max_length=40)
    evidence: str = Field(sa_type=sa.Text)
    explanation: str = Field(sa_type=sa.Text)
    dampened: bool = False
    supporting: bool = False


class ThreadRef(SQLModel, table=True):
    """Maps every Message-ID a thread contains or refers to (and subject keys) to it."""

    __tablename__ = "thread_ref"

    account: str = Field(primary_key=True, max_length=200)
    ref: str = Field(primary_key=True, max_length=998)
    thread_id: str = Field(max_length=120, index=True)


class Thread(SQLModel, table=True):
    __tablename__ = "thread"

    account: str = Field(primary_key=True, max_length=200)
    thread_id: str = Field(primary_key=True, max_length=120)
    risk: str = Field(default="none", max_length=6)
    score: float = 0.0
    categories: str = Field(default="", max_length=500)
    labels: str = Field(default="", sa_type=sa.Text)  # logical labels wanted, "\n"-separated
    subject: str = Field(default="", sa_type=sa.Text)
    first_date: NaiveDatetime | None = None
    last_date: NaiveDatetime | None = None
    updated_at: NaiveDatetime = Field(default_factory=utcnow, index=True)


class LabelCopy(SQLModel, table=True):
    """A copy of a message into a label folder: written before the COPY, done after it.

    A row that is not ``done`` after a crash means the copy may or may not exist; the
    label writer looks for it by Message-ID before copying again.
    """

    __tablename__ = "label_copy"

    message_pk: int = Field(primary_key=True, foreign_key="message.id", ondelete="CASCADE")
    folder: str = Field(primary_key=True, max_length=500)
    done: bool = False


class ScanRun(SQLModel, table=True):
    __tablename__ = "scan_run"
    __table_args__ = (
        sa.Index("ix_scan_run_started", "account", "started_at"),
        sa.Index("ix_scan_run_finished", "account", "finished_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(max_length=200)
    started_at: NaiveDatetime = Field(default_factory=utcnow)
    finished_at: NaiveDatetime | None = None
    dry_run: bool = False
    fetched: int = 0
    new_messages: int = 0
    risky: int = 0
    labelled: int = 0
    error: str | None = Field(default=None, sa_type=sa.Text)


class Evidence(SQLModel, table=True):
    """The original bytes of a message, as fetched, keyed by their SHA-256 (the same value
    as ``message.content_hash``): deduplicated, and checkable by anyone who recomputes
    the hash. Kept for good for flagged threads (see ``[evidence] keep``)."""

    __tablename__ = "evidence"

    sha256: str = Field(primary_key=True, max_length=64)
    size: int
    data: bytes = Field(sa_type=sa.LargeBinary)
    stored_at: NaiveDatetime = Field(default_factory=utcnow)


class DraftRecord(SQLModel, table=True):
    """One reply draft per thread, recorded before it is appended (``done`` after), so a
    draft the user deleted is never created again."""

    __tablename__ = "draft"

    account: str = Field(primary_key=True, max_length=200)
    thread_id: str = Field(primary_key=True, max_length=120)
    message_id: str = Field(max_length=998)
    folder: str = Field(max_length=500)
    language: str = Field(max_length=5)
    done: bool = False
    created_at: NaiveDatetime = Field(default_factory=utcnow)


class Digest(SQLModel, table=True):
    """One daily digest: stored (both bodies) before it is sent, so none is lost or sent
    twice. ``status``: pending (to send or retry), sent, empty (nothing to report and
    ``send_empty`` is off: kept as a record, never sent)."""

    __tablename__ = "digest"
    __table_args__ = (sa.Index("ix_digest_status", "account", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(max_length=200)
    period_start: NaiveDatetime | None = None  # None: since the beginning
    period_end: NaiveDatetime
    recipient: str = Field(max_length=998)
    subject: str = Field(sa_type=sa.Text)
    message_id: str = Field(max_length=998)
    text_body: str = Field(sa_type=sa.Text)
    html_body: str = Field(sa_type=sa.Text)
    threads: int = 0
    status: str = Field(default="pending", max_length=10)
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: NaiveDatetime = Field(default_factory=utcnow)
    sent_at: NaiveDatetime | None = None


def _clean_every_string_column(tables: Iterable[sa.Table]) -> None:
    """Give every string column of the store a cleaning type, so that no value reaches
    the database as it came out of a message: NUL and other control characters, lone
    surrogates and over-long values are what made one message stop a folder's scan for
    good on PostgreSQL. The DDL is unchanged (VARCHAR(n), TEXT). Done here, once, for
    every table and every way of writing (ORM rows, bulk inserts, updates, look-ups),
    so a look-up is cleaned exactly as the value it looks for was."""
    for table in tables:
        indexed = {c.name for c in table.primary_key.columns}
        for index in table.indexes:
            indexed.update(c.name for c in index.columns)
        for constraint in table.constraints:
            if isinstance(constraint, sa.UniqueConstraint):
                indexed.update(c.name for c in constraint.columns)
        for column in table.columns:
            kind = column.type
            if isinstance(kind, CleanString | CleanText):
                continue
            if isinstance(kind, sa.types.TypeDecorator):  # sqlmodel's AutoString
                kind = kind.impl_instance
            if isinstance(kind, sa.Text):
                column.type = CleanText()
            elif isinstance(kind, sa.String):
                column.type = CleanString(
                    kind.length, INDEX_VALUE_BYTES if column.name in indexed else None
                )


_clean_every_string_column(
    model.__table__  # type: ignore[union-attr]
    for model in (
        SchemaVersion,
        FolderState,
        StoredMessage,
        StoredFinding,
        ThreadRef,
        Thread,
        LabelCopy,
        ScanRun,
        Evidence,
        DraftRecord,
        Digest,
    )
)
_REF_TYPE: CleanString = ThreadRef.__table__.c.ref.type  # type: ignore[attr-defined]


def stored_ref(ref: str) -> str:
    """A thread ref as the store keeps it (cleaned, cut to its column)."""
    return _REF_TYPE.clean(ref)


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


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2, 2: _v2_to_v3}


def _current_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table("schema_version"):
        return None
    value = conn.execute(sa.text("SELECT MAX(version) FROM schema_version")).scalar()
    return int(value) if value is not None else None


def migrate(engine: Engine, target: int = SCHEMA_VERSION) -> int:
    """Create or upgrade the schema; returns the version the database is at."""
    with engine.begin() as conn:
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
    while version < target:
        step = MIGRATIONS.get(version)
        if step is None:
            raise StoreError(f"no migration from schema version {version}")
        with engine.begin() as conn:
            step(conn)
            conn.execute(
                sa.insert(SchemaVersion.__table__).values(  # type: ignore[attr-defined]
                    version=version + 1, applied_at=utcnow()
                )
            )
        version += 1
    return version


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

    def __init__(self, url: str) -> None:
        self.url = url
        path = sqlite_path(url)
        try:
            if path is not None:
                _prepare_sqlite_file(path)
            self.engine = sa.create_engine(url)
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


# --------------------------------------------------------------------------- queries


def get_folder_state(session: Session, account: str, folder: str) -> FolderState | None:
    return session.get(FolderState, (account, folder))


def save_folder_state(
    session: Session,
    account: str,
    folder: str,
    *,
    uidvalidity: int,
    last_uid: int,
    highest_modseq: int | None,
    uidnext: int | None,
    label_mode: str | None = None,
    mailbox: str | None = None,
) -> None:
    state = session.get(FolderState, (account, folder))
    if state is None:
        state = FolderState(account=account, folder=folder, uidvalidity=uidvalidity)
    if mailbox:
        state.mailbox = mailbox
    state.uidvalidity = uidvalidity
    state.last_uid = last_uid
    state.highest_modseq = highest_modseq
    state.uidnext = uidnext
    if label_mode:
        state.label_mode = label_mode
    state.updated_at = utcnow()
    session.add(state)


# Tables whose rows belong to one account's history (findings, label copies and evidence
# hang off messages or hashes and follow them).
_ACCOUNT_TABLES = ("folder_state", "message", "thread_ref", "thread", "scan_run", "draft", "digest")


def mailbox_archive(account: str, mailbox: str) -> str:
    """The account name under which ``account``'s history with ``mailbox`` is kept once
    the account points at another mailbox. It contains "@", which no configured account
    name may, so it never collides with one; too long a name is shortened with a hash."""
    name = f"{account}@{mailbox}"
    if len(name) > 200:
        name = f"{account}@{hashlib.sha256(mailbox.encode()).hexdigest()[:32]}"
    return name


def _account_has_rows(session: Session, account: str) -> bool:
    return any(
        session.execute(
            sa.text(f"SELECT 1 FROM {table} WHERE account = :a LIMIT 1"), {"a": account}
        ).first()
        for table in _ACCOUNT_TABLES
    )


def _move_history(session: Session, source: str, target: str, keep_run: int | None) -> None:
    session.flush()
    for table in _ACCOUNT_TABLES:
        where = "account = :source"
        if table == "scan_run" and keep_run is not None:
            where += " AND id <> :keep"  # the scan that is running belongs to the new one
        session.execute(
            sa.text(f"UPDATE {table} SET account = :target WHERE {where}"),
            {"source": source, "target": target, "keep": keep_run},
        )
    session.expire_all()


def claim_mailbox(
    session: Session, account: str, mailbox: str, keep_run: int | None = None
) -> tuple[str, str] | None:
    """Make ``account``'s folder state and history that of ``mailbox``.

    Folder state recorded for another mailbox (the configuration now names another host
    or user under the same account name) is not that mailbox's: the whole history moves
    to :func:`mailbox_archive` of the old mailbox, and a history kept earlier for
    ``mailbox`` (the account pointed at it before) comes back. Returns ``(old mailbox,
    archive name)`` when that happened. State recorded before v3 (no mailbox) is taken
    to be ``mailbox``'s."""
    states = session.exec(select(FolderState).where(FolderState.account == account)).all()
    others = sorted({s.mailbox for s in states if s.mailbox and s.mailbox != mailbox})
    earlier = mailbox_archive(account, mailbox)
    if not others:
        for state in states:
            if state.mailbox is None:
                state.mailbox = mailbox
                session.add(state)
        if not states and _account_has_rows(session, earlier):
            # back from a mailbox that was never scanned: nothing to keep aside
            _move_history(session, earlier, account, keep_run)
        return None
    old = others[0]
    archive = mailbox_archive(account, old)
    n = 1
    while _account_has_rows(session, archive):
        n += 1
        archive = f"{mailbox_archive(account, old)[:190]}#{n}"
    _move_history(session, account, archive, keep_run)
    if _account_has_rows(session, earlier):
        _move_history(session, earlier, account, keep_run)
    return old, archive


def message_at(
    session: Session, account: str, folder: str, uidvalidity: int, uid: int
) -> StoredMessage | None:
    stmt = select(StoredMessage).where(
        StoredMessage.account == account,
        StoredMessage.folder == folder,
        StoredMessage.uidvalidity == uidvalidity,
        StoredMessage.uid == uid,
    )
    return session.exec(stmt).first()


def stale_copy(
    session: Session, account: str, folder: str, content_hash: str, uidvalidity: int
) -> StoredMessage | None:
    """A row for the same bytes in the same folder recorded under an older UIDVALIDITY."""
    stmt = (
        select(StoredMessage)
        .where(
            StoredMessage.account == account,
            StoredMessage.folder == folder,
            StoredMessage.content_hash == content_hash,
            StoredMessage.uidvalidity != uidvalidity,
        )
        .order_by(col(StoredMessage.id))
    )
    return session.exec(stmt).first()


def locations(
    session: Session, account: str, folder: str, uidvalidity: int, uids: Sequence[int]
) -> dict[int, StoredMessage]:
    """The rows already recorded at these UIDs (one query for a batch)."""
    if not uids:
        return {}
    stmt = select(StoredMessage).where(
        StoredMessage.account == account,
        StoredMessage.folder == folder,
        StoredMessage.uidvalidity == uidvalidity,
        col(StoredMessage.uid).in_(list(uids)),
    )
    return {row.uid: row for row in session.exec(stmt)}


def has_other_uidvalidity(session: Session, account: str, folder: str, uidvalidity: int) -> bool:
    stmt = (
        select(StoredMessage.id)
        .where(
            StoredMessage.account == account,
            StoredMessage.folder == folder,
            StoredMessage.uidvalidity != uidvalidity,
        )
        .limit(1)
    )
    return session.exec(stmt).first() is not None


def messages_of_threads(
    session: Session, account: str, thread_ids: Sequence[str]
) -> dict[str, list[StoredMessage]]:
    out: dict[str, list[StoredMessage]] = {}
    for start in range(0, len(thread_ids), 500):
        stmt = (
            select(StoredMessage)
            .where(
                StoredMessage.account == account,
                col(StoredMessage.thread_id).in_(list(thread_ids[start : start + 500])),
            )
            .order_by(col(StoredMessage.date), col(StoredMessage.id))
        )
        for row in session.exec(stmt):
            out.setdefault(row.thread_id, []).append(row)
    return out


def threads_by_id(session: Session, account: str, thread_ids: Sequence[str]) -> dict[str, Thread]:
    out: dict[str, Thread] = {}
    for start in range(0, len(thread_ids), 500):
        stmt = select(Thread).where(
            Thread.account == account,
            col(Thread.thread_id).in_(list(thread_ids[start : start + 500])),
        )
        out.update({t.thread_id: t for t in session.exec(stmt)})
    return out


def add_findings(session: Session, message_pk: int, findings: Iterable[Any]) -> None:
    for f in findings:
        session.add(
            StoredFinding(
                message_pk=message_pk,
                rule=f.rule,
                category=f.category,
                score=f.score,
                where=f.where,
                evidence=f.evidence,
                explanation=f.explanation,
                dampened=f.dampened,
                supporting=f.supporting,
            )
        )


def threads_for_refs(session: Session, account: str, refs: Sequence[str]) -> list[str]:
    if not refs:
        return []
    stmt = select(ThreadRef.thread_id).where(
        ThreadRef.account == account, col(ThreadRef.ref).in_(list(refs))
    )
    return sorted(set(session.exec(stmt).all()))


def add_refs(session: Session, account: str, refs: Iterable[str], thread_id: str) -> None:
    wanted = {stored_ref(r) for r in refs}
    if not wanted:
        return
    stmt = select(ThreadRef).where(
        ThreadRef.account == account, col(ThreadRef.ref).in_(sorted(wanted))
    )
    for row in session.exec(stmt):
        wanted.discard(row.ref)
        if row.thread_id != thread_id:
            row.thread_id = thread_id
            session.add(row)
    session.add_all(ThreadRef(account=account, ref=ref, thread_id=thread_id) for ref in wanted)


def ref_map(session: Session, account: str, refs: Sequence[str]) -> dict[str, str]:
    """ref -> thread id for the refs known, keyed as the caller spelled them (a ref is
    stored cleaned, see :func:`stored_ref`)."""
    spelled: dict[str, list[str]] = {}
    for ref in refs:
        spelled.setdefault(stored_ref(ref), []).append(ref)
    keys = list(spelled)
    found: dict[str, str] = {}
    for start in range(0, len(keys), 500):
        stmt = select(ThreadRef.ref, ThreadRef.thread_id).where(
            ThreadRef.account == account, col(ThreadRef.ref).in_(keys[start : start + 500])
        )
        found.update({ref: thread for ref, thread in session.exec(stmt)})
    return {ref: found[key] for key, refs_of in spelled.items() if key in found for ref in refs_of}


def set_refs(session: Session, account: str, refs: dict[str, str]) -> None:
    """Point each ref at its thread (insert or update), a few statements per batch."""
    if not refs:
        return
    refs = {stored_ref(r): t for r, t in refs.items()}  # two spellings may be one stored ref
    existing = ref_map(session, account, sorted(refs))
    new = [
        {"account": account, "ref": r, "thread_id": t} for r, t in refs.items() if r not in existing
    ]
    if new:
        session.execute(sa.insert(ThreadRef), new)
    by_thread: dict[str, list[str]] = {}
    for r, t in refs.items():
        if r in existing and existing[r] != t:
            by_thread.setdefault(t, []).append(r)
    for thread_id, moved in by_thread.items():
        session.execute(
            sa.update(ThreadRef)
            .where(col(ThreadRef.account) == account, col(ThreadRef.ref).in_(moved))
            .values(thread_id=thread_id)
        )


def merge_threads(session: Session, account: str, into: str, others: Sequence[str]) -> None:
    """Fold ``others`` into ``into``: messages, refs and the thread rows."""
    if not others:
        return
    others = list(others)
    session.execute(
        sa.update(StoredMessage)
        .where(col(StoredMessage.account) == account, col(StoredMessage.thread_id).in_(others))
        .values(thread_id=into)
    )
    session.execute(
        sa.update(ThreadRef)
        .where(col(ThreadRef.account) == account, col(ThreadRef.thread_id).in_(others))
        .values(thread_id=into)
    )
    session.execute(
        sa.delete(Thread).where(col(Thread.account) == account, col(Thread.thread_id).in_(others))
    )


def thread_messages(session: Session, account: str, thread_id: str) -> list[StoredMessage]:
    stmt = (
        select(StoredMessage)
        .where(StoredMessage.account == account, StoredMessage.thread_id == thread_id)
        .order_by(col(StoredMessage.date), col(StoredMessage.id))
    )
    return list(session.exec(stmt).all())


def findings_for(session: Session, message_pks: Sequence[int]) -> dict[int, list[StoredFinding]]:
    out: dict[int, list[StoredFinding]] = {pk: [] for pk in message_pks}
    if not message_pks:
        return out
    stmt = (
        select(StoredFinding)
        .where(col(StoredFinding.message_pk).in_(list(message_pks)))
        .order_by(col(StoredFinding.id))
    )
    for f in session.exec(stmt):
        out[f.message_pk].append(f)
    return out


def pending_labels(
    session: Session, account: str, folder: str | None = None
) -> list[StoredMessage]:
    stmt = select(StoredMessage).where(
        StoredMessage.account == account, col(StoredMessage.label_pending).is_(True)
    )
    if folder is not None:
        stmt = stmt.where(StoredMessage.folder == folder)
    return list(session.exec(stmt.order_by(col(StoredMessage.folder), col(StoredMessage.uid))))


def get_thread(session: Session, account: str, thread_id: str) -> Thread | None:
    return session.get(Thread, (account, thread_id))


def label_copies(session: Session, message_pks: Sequence[int]) -> dict[tuple[int, str], bool]:
    if not message_pks:
        return {}
    stmt = select(LabelCopy).where(col(LabelCopy.message_pk).in_(list(message_pks)))
    return {(c.message_pk, c.folder): c.done for c in session.exec(stmt)}


def threads_since(
    session: Session, account: str | None, since: datetime | None, min_risk_levels: Sequence[str]
) -> list[Thread]:
    stmt = select(Thread).where(col(Thread.risk).in_(list(min_risk_levels)))
    if account is not None:
        stmt = stmt.where(Thread.account == account)
    if since is not None:
        stmt = stmt.where(
            sa.or_(
                col(Thread.last_date) >= since,
                sa.and_(col(Thread.last_date).is_(None), col(Thread.updated_at) >= since),
            )
        )
    rank = sa.case({"high": 3, "medium": 2, "low": 1}, value=col(Thread.risk), else_=0)
    stmt = stmt.order_by(rank.desc(), col(Thread.score).desc(), col(Thread.updated_at).desc())
    return list(session.exec(stmt).all())


@dataclass(frozen=True)
class StoreCounts:
    messages: int
    risky_threads: int
    findings: int


def counts(session: Session) -> StoreCounts:
    n_msg = session.exec(select(sa.func.count()).select_from(StoredMessage)).one()
    n_thr = session.exec(
        select(sa.func.count()).select_from(Thread).where(col(Thread.risk) != "none")
    ).one()
    n_find = session.exec(select(sa.func.count()).select_from(StoredFinding)).one()
    return StoreCounts(int(n_msg), int(n_thr), int(n_find))


def threads_updated_between(
    session: Session,
    account: str,
    start: datetime | None,
    end: datetime,
    levels: Sequence[str],
) -> list[Thread]:
    """Threads the guard changed in (start, end] at one of ``levels``, riskiest first."""
    stmt = select(Thread).where(
        Thread.account == account,
        col(Thread.risk).in_(list(levels)),
        col(Thread.updated_at) <= end,
    )
    if start is not None:
        stmt = stmt.where(col(Thread.updated_at) > start)
    rank = sa.case({"high": 3, "medium": 2, "low": 1}, value=col(Thread.risk), else_=0)
    stmt = stmt.order_by(rank.desc(), col(Thread.score).desc(), col(Thread.updated_at).desc())
    return list(session.exec(stmt).all())


def scan_totals_between(
    session: Session, account: str, start: datetime | None, end: datetime
) -> tuple[int, int]:
    """(messages scanned, scans run) by finished, non-dry scans in (start, end]."""
    stmt = select(sa.func.coalesce(sa.func.sum(ScanRun.new_messages), 0), sa.func.count()).where(
        ScanRun.account == account,
        col(ScanRun.dry_run).is_(False),
        col(ScanRun.finished_at).is_not(None),
        col(ScanRun.finished_at) <= end,
    )
    if start is not None:
        stmt = stmt.where(col(ScanRun.finished_at) > start)
    total, runs = session.exec(stmt).one()
    return int(total), int(runs)


def last_sent_digest(session: Session, account: str) -> Digest | None:
    stmt = (
        select(Digest)
        .where(Digest.account == account, col(Digest.status).in_(["sent", "empty"]))
        .order_by(col(Digest.period_end).desc())
    )
    return session.exec(stmt).first()


def pending_digests(session: Session, account: str) -> list[Digest]:
    stmt = (
        select(Digest)
        .where(Digest.account == account, Digest.status == "pending")
        .order_by(col(Digest.period_end))
    )
    return list(session.exec(stmt).all())


def evidence_missing(session: Session, hashes: Sequence[str]) -> set[str]:
    """Which of these content hashes have no stored original yet."""
    wanted = set(hashes)
    if not wanted:
        return set()
    have: set[str] = set()
    ordered = sorted(wanted)
    for start in range(0, len(ordered), 500):
        stmt = select(Evidence.sha256).where(col(Evidence.sha256).in_(ordered[start : start + 500]))
        have.update(session.exec(stmt).all())
    return wanted - have


def add_evidence(session: Session, raws: Iterable[bytes]) -> int:
    """Store originals not stored yet; returns how many were added. The key is computed
    here from the bytes themselves, so a row can never claim a hash it does not have."""
    import hashlib

    by_hash = {hashlib.sha256(raw).hexdigest(): raw for raw in raws}
    missing = evidence_missing(session, list(by_hash))
    if missing:
        session.execute(
            sa.insert(Evidence),
            [
                {"sha256": h, "size": len(by_hash[h]), "data": by_hash[h], "stored_at": utcnow()}
                for h in sorted(missing)
            ],
        )
    return len(missing)


def evidence_bytes(session: Session, sha256: str) -> bytes | None:
    row = session.get(Evidence, sha256)
    return bytes(row.data) if row is not None else None


def messages_with_rule(session: Session, message_pks: Sequence[int], rule: str) -> set[int]:
    """Which of these messages have a finding of ``rule`` (the unchecked marker, say)."""
    out: set[int] = set()
    pks = sorted(set(message_pks))
    for start in range(0, len(pks), 500):
        stmt = select(StoredFinding.message_pk).where(
            StoredFinding.rule == rule, col(StoredFinding.message_pk).in_(pks[start : start + 500])
        )
        out.update(session.exec(stmt).all())
    return out


def findings_of_rule_between(
    session: Session, account: str, rule: str, start: datetime | None, end: datetime
) -> list[tuple[StoredMessage, StoredFinding]]:
    """Messages first seen in (start, end] with a finding of ``rule``, oldest first."""
    stmt = (
        select(StoredMessage, StoredFinding)
        .join(StoredFinding, col(StoredFinding.message_pk) == col(StoredMessage.id))
        .where(
            StoredMessage.account == account,
            StoredFinding.rule == rule,
            col(StoredMessage.first_seen_at) <= end,
        )
    )
    if start is not None:
        stmt = stmt.where(col(StoredMessage.first_seen_at) > start)
    stmt = stmt.order_by(col(StoredMessage.first_seen_at), col(StoredMessage.id))
    return [(m, f) for m, f in session.exec(stmt).all()]
