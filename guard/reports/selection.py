"""Which threads of the store a report covers.

An evidence export: :func:`find_threads` lists the threads matching an id, subject or
address; :func:`select_threads` is what the ``export`` command asks for: the matches, or
one clean error when there are none or (without ``several``) more than one.

The digest and ``findings``, after what the user taught from the mail client: a thread
marked safe with no other category left is not shown (:func:`hidden_as_safe`), and a
reported thread is, whatever its risk (:func:`reported_threads`, :func:`with_reported`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from guard import store as st
from guard.errors import GuardError, Kind
from guard.mailbox.labels import CATEGORY_TITLES
from guard.policy.model import CATEGORIES

__all__ = [
    "NoThreadMatches",
    "ThreadMatch",
    "TooManyThreads",
    "find_threads",
    "flagged_categories",
    "hidden_as_safe",
    "reported_threads",
    "select_threads",
    "shown_categories",
    "thread_rows",
    "with_reported",
]


class NoThreadMatches(GuardError):
    """No thread of the store matches what was asked for."""

    kind = Kind.USAGE


class TooManyThreads(GuardError):
    """Several threads match, and only one was asked for; ``matches`` lists them."""

    kind = Kind.USAGE

    def __init__(self, message: str, matches: Sequence[ThreadMatch]) -> None:
        super().__init__(message)
        self.matches = list(matches)


@dataclass(frozen=True)
class ThreadMatch:
    """A thread of the store, as the export command lists and exports it."""

    account: str
    thread_id: str
    subject: str
    risk: str
    messages: int
    first_date: datetime | None  # naive UTC
    last_date: datetime | None


@dataclass
class _ThreadFacts:
    subjects: list[str] = field(default_factory=list)
    addresses: set[str] = field(default_factory=set)
    dates: list[datetime] = field(default_factory=list)
    count: int = 0


def _fold(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _id_matches(thread_id: str, wanted: str) -> bool:
    """A unique prefix of the id, with or without its kind ("t:", "gm:")."""
    if thread_id.startswith(wanted):
        return True
    kind, colon, rest = thread_id.partition(":")
    return bool(colon) and ":" not in wanted and bool(kind) and rest.startswith(wanted)


def _address_matches(addresses: set[str], wanted: str) -> bool:
    if wanted.startswith("@"):
        return any(a.endswith(wanted) for a in addresses)
    return wanted in addresses


def find_threads(
    session: Session,
    *,
    thread: str | None = None,
    query: str | None = None,
    sender: str | None = None,
    account: str | None = None,
) -> list[ThreadMatch]:
    """Threads of the store matching every criterion given, oldest first.

    ``thread``: an id as ``inbox-guard findings`` prints it, or a prefix of one (an exact
    id wins over longer ids it is a prefix of); ``query``: a case-insensitive substring of
    the thread's subject or of any of its messages' subjects; ``sender``: an address that
    wrote or received a message of the thread (``@domain`` for a whole domain), any case;
    ``account``: only threads of this mailbox. Comparisons are done here rather than in
    SQL so that case folding also works for non-ASCII text, on SQLite and PostgreSQL alike.
    """
    facts: dict[tuple[str, str], _ThreadFacts] = {}
    m = st.StoredMessage
    stmt = sa.select(
        col(m.account),
        col(m.thread_id),
        col(m.subject),
        col(m.sender),
        col(m.recipients),
        col(m.date),
        col(m.internal_date),
    )
    if thread is not None:
        stmt = stmt.where(col(m.thread_id).contains(thread, autoescape=True))
    if account is not None:
        stmt = stmt.where(col(m.account) == account)
    for account, thread_id, subject, from_, recipients, date, internal in session.execute(stmt):
        f = facts.setdefault((account, thread_id), _ThreadFacts())
        f.count += 1
        f.subjects.append(subject)
        f.addresses.update(a.strip().lower() for a in [from_, *st.split_commas(recipients)] if a)
        when = date or internal
        if when is not None:
            f.dates.append(when)
    if thread is not None:
        exact = {k for k in facts if k[1] == thread}
        keys = exact or {k for k in facts if _id_matches(k[1], thread)}
    else:
        keys = set(facts)
    if query is not None:
        q = _fold(query)
        keys = {k for k in keys if any(q in _fold(s) for s in facts[k].subjects)}
    if sender is not None:
        who = sender.strip().lower()
        keys = {k for k in keys if _address_matches(facts[k].addresses, who)}
    rows = thread_rows(session, sorted(keys))
    matches = []
    for key in keys:
        f = facts[key]
        row = rows.get(key)
        matches.append(
            ThreadMatch(
                account=key[0],
                thread_id=key[1],
                subject=row.subject if row is not None else (f.subjects[0] if f.subjects else ""),
                risk=row.risk if row is not None else "none",
                messages=f.count,
                first_date=min(f.dates) if f.dates else None,
                last_date=max(f.dates) if f.dates else None,
            )
        )
    matches.sort(key=lambda m: (m.first_date or datetime.max, m.account, m.thread_id))
    return matches


def thread_rows(
    session: Session, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], st.Thread]:
    """The thread rows of these (account, thread id) pairs."""
    out: dict[tuple[str, str], st.Thread] = {}
    by_account: dict[str, list[str]] = {}
    for account, thread_id in keys:
        by_account.setdefault(account, []).append(thread_id)
    for account, ids in by_account.items():
        for thread_id, row in st.threads_by_id(session, account, ids).items():
            out[(account, thread_id)] = row
    return out


def select_threads(
    session: Session,
    *,
    several: bool = False,
    thread: str | None = None,
    query: str | None = None,
    sender: str | None = None,
    account: str | None = None,
) -> list[ThreadMatch]:
    """The threads to export, as :func:`find_threads` finds them (``thread`` is taken
    without surrounding white space). Raises :class:`NoThreadMatches` when none matches,
    and :class:`TooManyThreads` when more than one does and ``several`` is off; their text
    names what was asked for."""
    matches = find_threads(
        session,
        thread=thread.strip() if thread is not None else None,
        query=query,
        sender=sender,
        account=account,
    )
    wanted = " and ".join(
        f"{name} {value!r}"
        for name, value in (("id", thread), ("subject", query), ("address", sender))
        if value is not None
    )
    if not matches:
        raise NoThreadMatches(
            f"no thread in the store matches {wanted} (`inbox-guard findings` lists them)"
        )
    if len(matches) > 1 and not several:
        raise TooManyThreads(
            f"{len(matches)} threads match {wanted}: give one thread id, "
            "or --all to export them all into one bundle",
            matches,
        )
    return matches


# --------------------------------------------------------------------------- what the user taught


def flagged_categories(thread: st.Thread) -> tuple[str, ...]:
    """The categories ``thread`` was flagged for, in the usual order: those its labels name
    (the messages at or above min_risk), else those of any of its messages."""
    names = {n for n in thread.label_list if n in CATEGORY_TITLES}
    if not names:
        names = {c for c in thread.category_list if c in CATEGORY_TITLES}
    return tuple(c for c in CATEGORIES if c in names)


def shown_categories(thread: st.Thread, categories: Sequence[str]) -> tuple[str, ...]:
    """``categories`` of ``thread`` without those the user marked safe on it."""
    safe = set(thread.safe_category_list)
    return tuple(c for c in categories if c not in safe)


def hidden_as_safe(thread: st.Thread, categories: Sequence[str]) -> bool:
    """Whether a report leaves ``thread`` out: the user marked it safe and none of its
    ``categories`` (what it was flagged for) is left that they did not mark safe."""
    return thread.marked_safe and not thread.reported and not shown_categories(thread, categories)


def reported_threads(
    session: Session,
    account: str | None,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    active_since: datetime | None = None,
    thread_ids: Sequence[str] = (),
) -> list[st.Thread]:
    """Reported threads, whatever their risk, that a report of a period shows: changed in
    ``(start, end]``, or one of ``thread_ids`` (reported in the period), or (with
    ``active_since``) with a message or a change since then, as
    :func:`guard.store.threads_since` counts it."""
    t = st.Thread
    stmt = select(t).where(col(t.reported).is_(True))
    if account is not None:
        stmt = stmt.where(t.account == account)
    if end is not None:
        changed = col(t.updated_at) <= end
        if start is not None:
            changed = sa.and_(changed, col(t.updated_at) > start)
        ids = sorted(set(thread_ids))
        stmt = stmt.where(sa.or_(changed, col(t.thread_id).in_(ids)) if ids else changed)
    if active_since is not None:
        stmt = stmt.where(
            sa.or_(
                col(t.last_date) >= active_since,
                sa.and_(col(t.last_date).is_(None), col(t.updated_at) >= active_since),
            )
        )
    return list(session.exec(stmt).all())


_RANK = {"high": 3, "medium": 2, "low": 1}


def with_reported(threads: Sequence[st.Thread], reported: Sequence[st.Thread]) -> list[st.Thread]:
    """``threads`` and the ``reported`` ones they lack, riskiest first (then by score,
    then the most recently changed), as :func:`guard.store.threads_since` orders them."""
    seen = {(x.account, x.thread_id) for x in threads}
    merged = [*threads, *(x for x in reported if (x.account, x.thread_id) not in seen)]
    merged.sort(key=_riskiest_first)
    return merged


def _riskiest_first(thread: st.Thread) -> tuple[int, float, float]:
    age = (thread.updated_at - datetime.min).total_seconds()
    return (-_RANK.get(thread.risk, 0), -thread.score, -age)
