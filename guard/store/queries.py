"""The queries the rest of the guard needs: messages, threads and their refs, findings,
labels, scan runs, digests and evidence.

What lives here is data, not decisions: ``scan`` decides what to record and label,
``threads`` decides which thread a message belongs to. Long lists of keys are looked up
500 at a time, so no statement carries an unbounded number of parameters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from guard.store.models import (
    Digest,
    Evidence,
    LabelCopy,
    ScanRun,
    StoredFinding,
    StoredMessage,
    Thread,
    ThreadRef,
    stored_ref,
)
from guard.store.values import utcnow


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


# What a stored finding keeps of a verdict's Finding (besides the message it belongs to).
_FINDING_FIELDS = (
    "rule",
    "category",
    "score",
    "where",
    "evidence",
    "explanation",
    "dampened",
    "supporting",
)


def add_findings(session: Session, message_pk: int, findings: Iterable[Any]) -> None:
    for f in findings:
        values = {name: getattr(f, name) for name in _FINDING_FIELDS}
        session.add(StoredFinding(message_pk=message_pk, **values))


def threads_for_refs(session: Session, account: str, refs: Sequence[str]) -> list[str]:
    if not refs:
        return []
    stmt = select(ThreadRef.thread_id).where(
        ThreadRef.account == account, col(ThreadRef.ref).in_(list(refs))
    )
    return sorted(set(session.exec(stmt).all()))


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


def _riskiest_first(stmt: SelectOfScalar[Thread]) -> SelectOfScalar[Thread]:
    """Threads ordered high, medium, low risk, then by score, then most recently updated."""
    rank = sa.case({"high": 3, "medium": 2, "low": 1}, value=col(Thread.risk), else_=0)
    return stmt.order_by(rank.desc(), col(Thread.score).desc(), col(Thread.updated_at).desc())


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
    return list(session.exec(_riskiest_first(stmt)).all())


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
    return list(session.exec(_riskiest_first(stmt)).all())


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
