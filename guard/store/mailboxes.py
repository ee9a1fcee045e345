"""Folder state, and which mailbox an account's history belongs to.

A folder's state (UIDVALIDITY, the last UID seen, the mailbox "user@host" it was read
from) says where the next scan starts. When an account name is pointed at another
mailbox, its whole history is moved aside under :func:`mailbox_archive` rather than
taken for that mailbox's (see :func:`claim_mailbox`).
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlmodel import Session, select

from guard.store.models import FolderState
from guard.store.values import utcnow


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
_ACCOUNT_TABLES = (
    "folder_state",
    "message",
    "thread_ref",
    "thread",
    "scan_run",
    "draft",
    "digest",
    "feedback",
    "feedback_move",
    "thread_report",
)


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
