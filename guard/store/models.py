"""The store's tables (SQLModel), with typed views of their list-valued columns.

The schema is defined here and nowhere else; ``database`` creates and migrates it. Some
columns hold a list as text (categories comma-separated, labels and notes one a line);
rows read and write them through properties (``category_list``, ``label_set``,
``note_list`` ...), and a query that selects such a column alone reads it with
:func:`split_commas` / :func:`split_lines` (written with their ``join_`` pair). The
separators live here only: no caller splits or joins a column by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import sqlalchemy as sa
from pydantic import NaiveDatetime
from sqlmodel import Field, SQLModel

from guard.store.values import INDEX_VALUE_BYTES, CleanString, CleanText, utcnow

# --------------------------------------------------------------------------- list columns


def join_commas(items: Iterable[str]) -> str:
    """A comma-separated column (categories, addresses), in the order given."""
    return ",".join(items)


def split_commas(text: str) -> tuple[str, ...]:
    """The non-empty items of a comma-separated column."""
    return tuple(item for item in text.split(",") if item)


def join_lines(items: Iterable[str]) -> str:
    """A column with one item a line (labels, notes), in the order given."""
    return "\n".join(items)


def split_lines(text: str) -> tuple[str, ...]:
    """The non-empty items of a column with one item a line."""
    return tuple(item for item in text.split("\n") if item)


class _HasCategories(Protocol):
    categories: str


class _Categorised:
    """``category_list``: the ``categories`` column of a message (in the verdict's order)
    or a thread (sorted, as the scan writes it) as a tuple; assigning one stores it."""

    @property
    def category_list(self: _HasCategories) -> tuple[str, ...]:
        return split_commas(self.categories)

    @category_list.setter
    def category_list(self: _HasCategories, names: Iterable[str]) -> None:
        self.categories = join_commas(names)


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


class StoredMessage(_Categorised, SQLModel, table=True):
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
    # v6, the freelancer's own mail: "decline" (refuses to leave the platform), "agree"
    # (goes along with it) or "" (neither, or a message received)
    stance: str = Field(default="", max_length=10)

    @property
    def label_set(self) -> frozenset[str]:
        """The label spellings written on the server for this message."""
        return frozenset(split_lines(self.labels))

    @label_set.setter
    def label_set(self, spellings: Iterable[str]) -> None:
        self.labels = join_lines(sorted(spellings))

    @property
    def recipient_list(self) -> tuple[str, ...]:
        """The To and Cc addresses, in the message's order."""
        return split_commas(self.recipients)

    @property
    def note_list(self) -> tuple[str, ...]:
        """What was skipped or unreadable, one note an item."""
        return split_lines(self.notes)


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


class Thread(_Categorised, SQLModel, table=True):
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
    # what the user taught about the thread (v4), kept in step with its feedback rows:
    # categories marked safe (never labelled again), and whether it was reported
    safe_categories: str = Field(default="", sa_type=sa.Text)  # comma-separated
    marked_safe: bool = False
    reported: bool = False
    # where an off-platform request stands (v6, guard.reports.escalation): "" (none),
    # asked, declined, asked_again, declined_twice, insists, agreed
    stage: str = Field(default="", max_length=20)

    @property
    def safe_category_list(self) -> tuple[str, ...]:
        return split_commas(self.safe_categories)

    @safe_category_list.setter
    def safe_category_list(self, names: Iterable[str]) -> None:
        self.safe_categories = join_commas(sorted(set(names)))

    @property
    def label_list(self) -> tuple[str, ...]:
        """The logical labels the thread wants, in stored (sorted) order."""
        return split_lines(self.labels)

    @label_list.setter
    def label_list(self, names: Iterable[str]) -> None:
        self.labels = join_lines(sorted(names))


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
    """One reply draft per thread and rung of the escalation ladder (1: the decline, 2: a
    firm restatement, 3: the notice of a report), recorded before it is appended (``done``
    after), so a draft the user deleted is never created again."""

    __tablename__ = "draft"

    account: str = Field(primary_key=True, max_length=200)
    thread_id: str = Field(primary_key=True, max_length=120)
    rung: int = Field(default=1, primary_key=True)  # v6
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


class Feedback(_Categorised, SQLModel, table=True):
    """One correction by the user: a thread marked safe or reported, from the mail client.

    ``thread_id`` is None while the message is one the guard had not recorded yet (it is
    linked, by ``content_hash``, when the scan records it). ``categories``: for "safe", the
    categories the thread was flagged for (never labelled again on it, and the text ones
    trusted from ``sender``); for "report", the engine's categories of the message.
    ``applied``: the labels on the server were brought in line with it."""

    __tablename__ = "feedback"
    __table_args__ = (
        sa.Index("ix_feedback_thread", "account", "thread_id"),
        sa.Index("ix_feedback_hash", "account", "content_hash"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(max_length=200)
    kind: str = Field(max_length=6)  # "safe" or "report"
    via: str = Field(max_length=20)  # move, copy, keywords, gmail-label
    thread_id: str | None = Field(default=None, max_length=120)
    content_hash: str = Field(max_length=64)
    message_id: str | None = Field(default=None, sa_type=sa.Text)
    sender: str = Field(default="", max_length=998)
    sender_trusted: bool = False  # the sender passed authentication: may be trusted
    subject: str = Field(default="", sa_type=sa.Text)
    categories: str = Field(default="", max_length=500)
    fingerprint: str | None = Field(default=None, sa_type=sa.Text)  # reports only
    applied: bool = False
    created_at: NaiveDatetime = Field(default_factory=utcnow)
    # undone by the user (``feedback --forget``): kept for the record, counts no more, and
    # ``applied`` goes back to False so the next scan puts the thread's labels right
    forgotten_at: NaiveDatetime | None = None


class FeedbackMove(SQLModel, table=True):
    """A message in a feedback folder being put back (``target``) or, when it was a copy,
    removed: written before the IMAP command, ``done`` after. After a crash the source UID
    is looked for: still there, the step is done again; gone, it was done (UID MOVE and
    UID EXPUNGE are atomic), and the new UID in ``target`` is found among the UIDs from
    ``target_uidnext`` on by ``content_hash``."""

    __tablename__ = "feedback_move"
    __table_args__ = (sa.Index("ix_feedback_move_open", "account", "done"),)

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(max_length=200)
    feedback_pk: int | None = Field(default=None, foreign_key="feedback.id", ondelete="SET NULL")
    source: str = Field(max_length=500)
    uidvalidity: int = Field(sa_type=sa.BigInteger)
    uid: int = Field(sa_type=sa.BigInteger)
    action: str = Field(max_length=10)  # "move" (put back) or "delete" (a copy)
    target: str | None = Field(default=None, max_length=500)
    target_uidnext: int | None = Field(default=None, sa_type=sa.BigInteger)
    content_hash: str = Field(max_length=64)
    message_pk: int | None = None  # the recorded original, whose UID follows the move
    done: bool = False
    created_at: NaiveDatetime = Field(default_factory=utcnow)


class ThreadReport(SQLModel, table=True):
    """The report of a client who insisted on leaving the platform (rung 3, or asked for
    with ``inbox-guard report``): the text to paste into the platform's form, and the
    evidence bundle made for it (v6)."""

    __tablename__ = "thread_report"

    account: str = Field(primary_key=True, max_length=200)
    thread_id: str = Field(primary_key=True, max_length=120)
    text: str = Field(sa_type=sa.Text)
    bundle: str = Field(default="", sa_type=sa.Text)  # the bundle's path
    bundle_sha256: str = Field(default="", max_length=64)  # of its MANIFEST.json
    created_at: NaiveDatetime = Field(default_factory=utcnow)


class AccountLease(SQLModel, table=True):
    """Which daemon owns an account (several daemons on one PostgreSQL store, v5): see
    ``guard.store.coordination``. ``owner`` "" and an expiry in the past: free."""

    __tablename__ = "account_lease"

    account: str = Field(primary_key=True, max_length=200)
    owner: str = Field(default="", max_length=200)
    expires_at: NaiveDatetime = Field(index=True)


class Replica(SQLModel, table=True):
    """A daemon that shares the store, with when it last said it was alive (v5)."""

    __tablename__ = "replica"

    id: str = Field(primary_key=True, max_length=200)
    started_at: NaiveDatetime
    last_seen: NaiveDatetime = Field(index=True)


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
        Feedback,
        FeedbackMove,
        AccountLease,
        Replica,
        ThreadReport,
    )
)
_REF_TYPE: CleanString = ThreadRef.__table__.c.ref.type  # type: ignore[attr-defined]


def stored_ref(ref: str) -> str:
    """A thread ref as the store keeps it (cleaned, cut to its column)."""
    return _REF_TYPE.clean(ref)
