"""Which threads of the store an evidence export covers: found by id, subject or address.

:func:`find_threads` lists the threads matching the criteria; :func:`select_threads` is
what the ``export`` command asks for: the matches, or one clean error when there are none
or (without ``several``) more than one.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col

from guard import store as st
from guard.errors import GuardError, Kind

__all__ = [
    "NoThreadMatches",
    "ThreadMatch",
    "TooManyThreads",
    "find_threads",
    "select_threads",
    "thread_rows",
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
