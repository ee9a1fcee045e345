"""The original bytes of each message of an export, checked against the recorded hash.

Each message is taken from the store's ``evidence`` copy when that copy's SHA-256 is the
one recorded when the guard first read the message; otherwise it is fetched from a
:class:`MessageSource` (the IMAP server, read-only) and accepted only when its SHA-256,
or that of the prefix the guard read of a message above ``imap.max_message_bytes``, is
the recorded one. :func:`settle` then decides, per message, whether it is included, only
partly included (the stored prefix) or missing, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session

from guard import store as st
from guard.errors import GuardError, Kind
from guard.reports.bundle import sha256_hex

__all__ = [
    "Item",
    "MessageSource",
    "SourceUnavailable",
    "check_store_copies",
    "fetch_from_server",
    "settle",
    "sort_key",
]


class SourceUnavailable(GuardError):
    """The server cannot give these messages; the message is the reason, in one line."""

    kind = Kind.NETWORK


class MessageSource(Protocol):
    """Gives the original bytes of messages the store kept no copy of."""

    def fetch(
        self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> dict[int, bytes]:
        """UID -> the message's bytes, for the UIDs still there; raises SourceUnavailable
        (with the reason) when none of them can be fetched."""
        ...

    def close(self) -> None: ...


@dataclass
class Item:
    """One message of the bundle while it is being put together."""

    row: st.StoredMessage
    findings: list[st.StoredFinding]
    thread_number: int
    stored: int | None = None  # size of the store's verified copy; None: no usable copy
    store_note: str = ""  # why the store's copy could not be used
    raw: bytes | None = None  # the whole message, fetched from the server
    status: str = "missing"  # included | partial | missing
    obtained_from: str = ""  # store | imap
    note: str = ""  # for a missing message: the reason; otherwise anything worth saying
    number: int = 0
    file: str | None = None
    date_header: str | None = None  # as written in the message
    truncated: bool = False  # the store's copy is only the prefix the scan read
    recorded_bytes: int | None = None  # the recorded hash covers only this many first bytes

    @property
    def needs_server(self) -> bool:
        return self.stored is None or self.truncated


def sort_key(item: Item) -> tuple[Any, ...]:
    r = item.row
    return (
        r.date or r.internal_date or datetime.max,
        r.internal_date or datetime.max,
        r.account,
        r.folder,
        r.uidvalidity,
        r.uid,
        r.id or 0,
    )


def check_store_copies(
    session: Session, items: Sequence[Item], prefix_bytes: Mapping[str, int]
) -> None:
    """Which originals the store holds, checked against their recorded hash one at a time
    (a thread can hold large attachments: they are not all kept in memory).

    A copy shorter than the size the server reported is the prefix a scan read of a
    message above ``imap.max_message_bytes`` when the scan said so in the message's notes
    or the copy has exactly that size; otherwise the server's size was just imprecise."""
    wanted = sorted({i.row.content_hash for i in items})
    have = set(wanted) - st.evidence_missing(session, wanted)
    checked: dict[str, tuple[int | None, str]] = {}
    for sha in sorted(have):
        data = st.evidence_bytes(session, sha)
        if data is None:
            checked[sha] = (None, "")
        elif sha256_hex(data) != sha:
            checked[sha] = (None, "the store's copy does not match its recorded SHA-256")
        else:
            checked[sha] = (len(data), "")
    for item in items:
        item.stored, item.store_note = checked.get(item.row.content_hash, (None, ""))
        item.truncated = (
            item.stored is not None
            and item.stored < item.row.size
            and (
                "imap.max_message_bytes" in item.row.notes
                or item.stored == prefix_bytes.get(item.row.account)
            )
        )


def _accept_from_server(
    raw: bytes, item: Item, prefix_sizes: Iterable[int]
) -> tuple[str, int | None] | None:
    """(note, prefix length) when the server's bytes are the message the guard read, None
    when not; the prefix length is None when the recorded hash covers the whole message.

    The guard hashes what it fetched; for a message above ``imap.max_message_bytes`` that
    is only a prefix, so the whole message is accepted when that prefix matches."""
    if sha256_hex(raw) == item.row.content_hash:
        return "", None
    for n in sorted({n for n in prefix_sizes if 0 < n < len(raw)}):
        if sha256_hex(raw[:n]) == item.row.content_hash:
            return (
                f"inbox-guard had read only the first {n} bytes of this message "
                "(imap.max_message_bytes); they match the SHA-256 it recorded, and the whole "
                "message was fetched from the server",
                n,
            )
    return None


def fetch_from_server(
    items: Sequence[Item], source: MessageSource | None, prefix_bytes: Mapping[str, int]
) -> None:
    groups: dict[tuple[str, str, int], list[Item]] = {}
    for item in items:
        if item.needs_server:
            r = item.row
            groups.setdefault((r.account, r.folder, r.uidvalidity), []).append(item)
    for (account, folder, uidvalidity), members in sorted(groups.items()):
        if source is None:
            for item in members:
                item.note = "the server was not asked"
            continue
        try:
            got = source.fetch(account, folder, uidvalidity, sorted({m.row.uid for m in members}))
        except SourceUnavailable as exc:
            for item in members:
                item.note = str(exc)
            continue
        for item in members:
            raw = got.get(item.row.uid)
            if raw is None:
                item.note = (
                    f"no longer on the server (deleted or moved from {folder!r}, "
                    f"UID {item.row.uid})"
                )
                continue
            sizes = [s for s in (item.stored, prefix_bytes.get(account)) if s is not None]
            accepted = _accept_from_server(raw, item, sizes)
            if accepted is None:
                item.note = (
                    f"the server's copy (UID {item.row.uid} in {folder!r}) is not the message "
                    f"inbox-guard read: its SHA-256 is {sha256_hex(raw)}, not "
                    f"{item.row.content_hash}"
                )
                continue
            item.raw, (item.note, item.recorded_bytes) = raw, accepted


def settle(items: Sequence[Item]) -> None:
    """Decide, for each message, what goes into the bundle."""
    for item in items:
        if item.raw is not None:
            item.status, item.obtained_from = "included", "imap"
            if item.store_note:
                fetched = "the message was fetched from the server again"
                item.note = "; ".join(x for x in (item.store_note, fetched, item.note) if x)
        elif item.stored is not None and not item.truncated:
            item.status, item.obtained_from, item.note = "included", "store", ""
        elif item.stored is not None:
            item.status, item.obtained_from = "partial", "store"
            item.note = (
                f"only the first {item.stored} of {item.row.size} bytes were kept "
                f"(imap.max_message_bytes), and the whole message could not be fetched: "
                f"{item.note or 'no reason given'}"
            )
        else:
            reasons = [r for r in (item.store_note, item.note) if r]
            if not item.store_note:
                reasons.insert(0, "no copy in the store")
            item.status, item.obtained_from = "missing", ""
            item.note = "; ".join(reasons)
