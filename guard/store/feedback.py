"""Queries on the user's feedback: threads marked safe or reported, and put-backs.

A thread's feedback columns (``safe_categories``, ``marked_safe``, ``reported``) are a
summary of its feedback rows, rebuilt by :func:`refresh_thread` whenever a row is added or
forgotten: the latest word counts (a report after "safe" undoes it, and the other way
round), and the categories marked safe since the last report add up. A forgotten row is
kept (``forgotten_at``) but counts nowhere except in :func:`unapplied_feedback`, so the
next scan brings the thread's labels back in line.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from guard.store.models import Feedback, FeedbackMove, StoredMessage, Thread
from guard.store.values import utcnow


def feedback_rows(
    session: Session, account: str | None = None, since: datetime | None = None
) -> list[Feedback]:
    """Feedback rows in force, oldest first (one account's, and from ``since`` on, when
    given)."""
    stmt = select(Feedback).where(col(Feedback.forgotten_at).is_(None))
    if account is not None:
        stmt = stmt.where(Feedback.account == account)
    if since is not None:
        stmt = stmt.where(Feedback.created_at >= since)
    return list(session.exec(stmt.order_by(col(Feedback.id))))


def feedback_between(
    session: Session, account: str, start: datetime | None, end: datetime
) -> list[Feedback]:
    """One account's feedback in force recorded in [start, end) (start None: since the
    beginning)."""
    stmt = select(Feedback).where(
        Feedback.account == account,
        Feedback.created_at < end,
        col(Feedback.forgotten_at).is_(None),
    )
    if start is not None:
        stmt = stmt.where(Feedback.created_at >= start)
    return list(session.exec(stmt.order_by(col(Feedback.id))))


def thread_feedback(session: Session, account: str, thread_id: str) -> list[Feedback]:
    """One thread's feedback in force, oldest first."""
    stmt = select(Feedback).where(
        Feedback.account == account,
        Feedback.thread_id == thread_id,
        col(Feedback.forgotten_at).is_(None),
    )
    return list(session.exec(stmt.order_by(col(Feedback.id))))


def unlinked_feedback(session: Session, account: str, hashes: Sequence[str]) -> list[Feedback]:
    """Feedback on messages not recorded when it was given, whose bytes are ``hashes``."""
    if not hashes:
        return []
    stmt = select(Feedback).where(
        Feedback.account == account,
        col(Feedback.thread_id).is_(None),
        col(Feedback.content_hash).in_(sorted(set(hashes))),
        col(Feedback.forgotten_at).is_(None),
    )
    return list(session.exec(stmt.order_by(col(Feedback.id))))


def unapplied_feedback(session: Session, account: str) -> list[Feedback]:
    """Feedback linked to a thread whose labels are not brought in line with it yet
    (given, or forgotten, since the last scan)."""
    stmt = select(Feedback).where(
        Feedback.account == account,
        col(Feedback.thread_id).is_not(None),
        col(Feedback.applied).is_(False),
    )
    return list(session.exec(stmt.order_by(col(Feedback.id))))


def refresh_thread(session: Session, thread: Thread) -> None:
    """Rebuild ``thread``'s feedback columns from its feedback rows (see module doc)."""
    safe: set[str] = set()
    marked_safe = reported = False
    for row in thread_feedback(session, thread.account, thread.thread_id):
        if row.kind == "report":
            reported, marked_safe, safe = True, False, set()
        else:
            reported, marked_safe = False, True
            safe.update(row.category_list)
    thread.safe_category_list = safe
    thread.marked_safe = marked_safe
    thread.reported = reported
    session.add(thread)


def forget_feedback(session: Session, feedback_id: int) -> Feedback | None:
    """Undo one feedback row: it counts no more, and the next scan puts its thread's
    labels right. The row, or None when there is none in force with that id."""
    row = session.get(Feedback, feedback_id)
    if row is None or row.forgotten_at is not None:
        return None
    row.forgotten_at = utcnow()
    row.applied = False
    session.add(row)
    session.flush()
    return row


def open_moves(session: Session, account: str) -> list[FeedbackMove]:
    """Put-backs written ahead and not known to be done (an interrupted scan)."""
    stmt = select(FeedbackMove).where(
        FeedbackMove.account == account, col(FeedbackMove.done).is_(False)
    )
    return list(session.exec(stmt.order_by(col(FeedbackMove.id))))


def recorded_original(
    session: Session, account: str, content_hash: str, message_id: str | None
) -> StoredMessage | None:
    """The recorded message with these bytes (or, failing that, this Message-ID and
    nothing else matching), the first recorded; None for one the guard never saw."""
    stmt = (
        select(StoredMessage)
        .where(StoredMessage.account == account, StoredMessage.content_hash == content_hash)
        .order_by(col(StoredMessage.id))
        .limit(1)
    )
    row = session.exec(stmt).first()
    if row is not None or not message_id:
        return row
    stmt = (
        select(StoredMessage)
        .where(StoredMessage.account == account, StoredMessage.message_id == message_id)
        .order_by(col(StoredMessage.id))
        .limit(2)
    )
    found = list(session.exec(stmt))
    return found[0] if len(found) == 1 else None


def keyword_labelled(
    session: Session, account: str, folder: str, uidvalidity: int
) -> list[StoredMessage]:
    """Messages of one folder the guard labelled with a keyword."""
    stmt = select(StoredMessage).where(
        StoredMessage.account == account,
        StoredMessage.folder == folder,
        StoredMessage.uidvalidity == uidvalidity,
        col(StoredMessage.labels).contains("keyword:"),
    )
    return list(session.exec(stmt.order_by(col(StoredMessage.uid))))


def has_feedback(session: Session, account: str, content_hash: str, kind: str) -> bool:
    """Whether this message was already marked ``kind`` (the same correction twice)."""
    stmt = select(Feedback.id).where(
        Feedback.account == account,
        Feedback.content_hash == content_hash,
        Feedback.kind == kind,
        col(Feedback.forgotten_at).is_(None),
    )
    return session.exec(stmt.limit(1)).first() is not None
