"""Dispute evidence: a self-checking zip of a conversation, and the check of one.

When a client cancels a contract or refuses to pay, the freelancer's protection in the
platform's dispute process is a complete, unaltered record of every message with dates.
:func:`export_bundle` writes that record for one or more threads of the store::

    messages/001-2026-10-01-logo-design.eml   every message, the original bytes
    timeline.html, timeline.txt               who wrote what when, the findings, attachments
    README.txt                                how anyone can check the bundle
    MANIFEST.json                             per message: file, SHA-256, size, IMAP source
                                              (folder, UIDVALIDITY, UID, INTERNALDATE),
                                              Message-ID, Date header; SHA-256 of every file
    MANIFEST.json.sha256                      SHA-256 of MANIFEST.json, then of every other
                                              file, in the format ``sha256sum -c`` reads

The originals come from the store's ``evidence`` table; a message the store has no copy
of is fetched from the IMAP server (``BODY.PEEK[]``, read-only) and accepted only when its
SHA-256 is the one recorded when the guard first read it. A message that cannot be
obtained is listed in the manifest as missing, with the reason, and never left out
silently. :func:`guard.reports.verify.verify_bundle` recomputes every hash without
extracting anything.

Here: choosing the originals (:mod:`guard.reports.originals`, with the IMAP source
below), the timeline (:mod:`guard.reports.timeline`), the manifest, and writing it all
with :mod:`guard.reports.bundle`. The threads come from :mod:`guard.reports.selection`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

from guard import __version__
from guard import store as st
from guard.config import Config
from guard.mail import Message, parse_message
from guard.mailbox import Connection, ImapError, server_settings
from guard.reports.bundle import (
    FORMAT,
    MANIFEST,
    MANIFEST_SUMS,
    README,
    TIMELINE_HTML,
    TIMELINE_TXT,
    AtomicZip,
    ExportError,
    manifest_json,
    message_file_name,
    sha256_hex,
    sums_file,
)
from guard.reports.originals import (
    Item,
    MessageSource,
    SourceUnavailable,
    check_store_copies,
    fetch_from_server,
    settle,
    sort_key,
)
from guard.reports.selection import ThreadMatch, thread_rows
from guard.reports.timeline import (
    message_view,
    readme_text,
    render_timeline,
    thread_view,
    timeline_title,
    when_view,
    zone_label,
)
from guard.reports.views import Timeline, TimelineMessage, When

__all__ = ["ExportResult", "ImapSource", "MessageOutcome", "export_bundle"]

_iso = st.iso_z


# --------------------------------------------------------------------------- the IMAP source


class ImapSource:
    """The account's IMAP server, read-only: folders are EXAMINEd and messages fetched with
    ``BODY.PEEK[]``, so nothing changes in the mailbox (not even ``\\Seen``). One
    connection per account, opened on first use."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._connections: dict[str, Connection] = {}
        self._failed: dict[str, str] = {}

    def _connection(self, account: str) -> Connection:
        if account in self._failed:
            raise SourceUnavailable(self._failed[account])
        conn = self._connections.get(account)
        if conn is None:
            from guard.config import ConfigError

            try:
                server = server_settings(self.config, account)
            except ConfigError:
                self._failed[account] = f"account {account!r} is not in the configuration"
                raise SourceUnavailable(self._failed[account]) from None
            try:
                conn = Connection(server).open()
            except ImapError as exc:
                self._failed[account] = f"the IMAP server could not be reached: {exc}"
                raise SourceUnavailable(self._failed[account]) from None
            self._connections[account] = conn
        return conn

    def _lost(self, account: str, exc: ImapError) -> SourceUnavailable:
        conn = self._connections.pop(account, None)
        if conn is not None:
            conn.close()
        self._failed[account] = f"the IMAP server failed: {exc}"
        return SourceUnavailable(self._failed[account])

    def fetch(
        self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> dict[int, bytes]:
        conn = self._connection(account)
        try:
            selected = conn.select(folder, readonly=True)
        except ImapError as exc:
            if exc.kind == "folder":
                raise SourceUnavailable(f"not on the server: {exc}") from None
            raise self._lost(account, exc) from None
        if selected.uidvalidity != uidvalidity:
            raise SourceUnavailable(
                f"folder {folder!r} was re-created on the server (UIDVALIDITY {uidvalidity} "
                f"is now {selected.uidvalidity}), so its UIDs changed: run `inbox-guard scan` "
                "to find the message again, then export again"
            )
        try:
            return {f.uid: f.raw for f in conn.fetch(list(uids), sys.maxsize)}
        except ImapError as exc:
            raise self._lost(account, exc) from None

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()


# --------------------------------------------------------------------------- writing


def _date_header(raw: bytes) -> str | None:
    """The Date header exactly as written (unfolded), or None."""
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
        value = headers.get("Date")
    except Exception:  # a header block the parser cannot read: the .eml still has it
        return None
    if value is None:
        return None
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


@dataclass(frozen=True)
class MessageOutcome:
    number: int
    file: str | None
    status: str  # included | partial | missing
    note: str  # the reason for a missing or partial message
    account: str
    folder: str
    uidvalidity: int
    uid: int
    message_id: str | None
    subject: str


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest_sha256: str
    messages: tuple[MessageOutcome, ...]
    files: int  # entries in the zip

    @property
    def incomplete(self) -> tuple[MessageOutcome, ...]:
        return tuple(m for m in self.messages if m.status != "included")

    @property
    def included(self) -> int:
        return sum(1 for m in self.messages if m.status != "missing")


def _manifest_message(item: Item, sha: str | None, size: int | None) -> dict[str, Any]:
    r = item.row
    entry: dict[str, Any] = {
        "number": item.number,
        "file": item.file,
        "status": item.status,
        "sha256": sha,
        "size": size,
        "recorded_sha256": r.content_hash,
        "recorded_bytes": item.recorded_bytes,
        "obtained_from": item.obtained_from or None,
        "account": r.account,
        "thread_id": r.thread_id,
        "direction": r.direction,
        "imap": {
            "folder": r.folder,
            "uidvalidity": r.uidvalidity,
            "uid": r.uid,
            "internal_date": _iso(r.internal_date),
        },
        "message_id": r.message_id,
        "date_header": item.date_header,
        "date_utc": _iso(r.date),
        "from": r.sender,
        "subject": r.subject,
    }
    if item.note:
        entry["note"] = item.note
    return entry


def export_bundle(
    store: st.Store,
    threads: Sequence[ThreadMatch],
    out: Path,
    *,
    source: MessageSource | None,
    zone: tzinfo | None = None,
    prefix_bytes: Mapping[str, int] | None = None,
    now: datetime | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write the evidence bundle of ``threads`` to ``out`` (see the module docstring).

    ``source`` gives the messages the store has no copy of (None: do not ask a server);
    ``prefix_bytes`` is each account's ``imap.max_message_bytes``, how much of a big
    message the guard read and hashed; ``zone`` is shown beside UTC in the timeline.
    Raises ExportError when nothing could be written; messages that could not be obtained
    are listed in the result (and the manifest) instead.
    """
    if not threads:
        raise ExportError("no thread to export")
    created = (st.as_utc_naive(now) or st.utcnow()).replace(microsecond=0)
    items: list[Item] = []
    with store.session() as session:
        thread_table = thread_rows(session, [(t.account, t.thread_id) for t in threads])
        for number, match in enumerate(threads, 1):
            rows = st.thread_messages(session, match.account, match.thread_id)
            found = st.findings_for(session, [r.id for r in rows if r.id is not None])
            items.extend(Item(r, found.get(r.id or 0, []), number) for r in rows)
        if not items:
            raise ExportError("the store has no messages for this thread")
        check_store_copies(session, items, prefix_bytes or {})
    fetch_from_server(items, source, prefix_bytes or {})
    settle(items)
    items.sort(key=sort_key)
    width = max(3, len(str(len(items))))
    for number, item in enumerate(items, 1):
        item.number = number
        if item.status != "missing":
            item.file = message_file_name(number, width, item.row)

    bundle = AtomicZip(out, created, overwrite)
    try:
        manifest_messages: list[dict[str, Any]] = []
        views: list[TimelineMessage] = []
        files: list[tuple[str, str]] = []  # (name, sha256) of everything but the manifest
        for item in items:
            msg: Message | None = None
            sha: str | None = None
            size: int | None = None
            if item.file is not None:
                raw = item.raw if item.raw is not None else _stored(store, item)
                sha, size = bundle.add(item.file, raw)
                files.append((item.file, sha))
                item.date_header = _date_header(raw)
                msg = parse_message(raw)
                item.raw = None  # the zip has it now
            manifest_messages.append(_manifest_message(item, sha, size))
            views.append(message_view(item, msg, sha or "", zone))
        timeline = Timeline(
            title=timeline_title(threads),
            created=when_view(created, zone) or When(""),
            zone=zone_label(zone, created),
            version=__version__,
            threads=tuple(
                thread_view(i, t, thread_table.get((t.account, t.thread_id)), zone)
                for i, t in enumerate(threads, 1)
            ),
            messages=tuple(views),
            included=sum(1 for i in items if i.status == "included"),
            partial=sum(1 for i in items if i.status == "partial"),
            missing=sum(1 for i in items if i.status == "missing"),
        )
        html, text = render_timeline(timeline)
        others: list[dict[str, Any]] = []
        for name, data in (
            (TIMELINE_HTML, html.encode()),
            (TIMELINE_TXT, text.encode()),
            (README, readme_text(timeline).encode()),
        ):
            sha, size = bundle.add(name, data)
            files.append((name, sha))
            others.append({"file": name, "sha256": sha, "size": size})
        manifest = {
            "format": FORMAT,
            "tool": {"name": "inbox-guard", "version": __version__},
            "created_at": _iso(created),
            "hashes": (
                "SHA-256 of each file's bytes. The SHA-256 of this file cannot be in it: it "
                f"is the first line of {MANIFEST_SUMS}, followed by the SHA-256 of every "
                "other file in sha256sum format (check with: sha256sum -c "
                f"{MANIFEST_SUMS})."
            ),
            "timezone": zone_label(zone, created) if zone is not None else None,
            "threads": [
                {
                    "account": t.account,
                    "thread_id": t.thread_id,
                    "subject": t.subject,
                    "risk": t.risk,
                    "categories": _categories(thread_table.get((t.account, t.thread_id))),
                    "first_date": _iso(t.first_date),
                    "last_date": _iso(t.last_date),
                }
                for t in threads
            ],
            "counts": {
                "messages": len(items),
                "included": timeline.included,
                "partial": timeline.partial,
                "missing": timeline.missing,
            },
            "messages": manifest_messages,
            "files": others,
        }
        manifest_sha, _ = bundle.add(MANIFEST, manifest_json(manifest))
        bundle.add(MANIFEST_SUMS, sums_file(manifest_sha, files))
        bundle.commit()
    except BaseException:
        bundle.discard()
        raise
    return ExportResult(
        path=out,
        manifest_sha256=manifest_sha,
        messages=tuple(
            MessageOutcome(
                number=i.number,
                file=i.file,
                status=i.status,
                note=i.note,
                account=i.row.account,
                folder=i.row.folder,
                uidvalidity=i.row.uidvalidity,
                uid=i.row.uid,
                message_id=i.row.message_id,
                subject=i.row.subject,
            )
            for i in items
        ),
        files=len(bundle.names),
    )


def _stored(store: st.Store, item: Item) -> bytes:
    with store.session() as session:
        data = st.evidence_bytes(session, item.row.content_hash)
    if data is None or sha256_hex(data) != item.row.content_hash:
        # checked a moment ago; only a concurrent change of the store can get here
        raise ExportError(f"the store's copy of message {item.number} changed during the export")
    return data


def _categories(row: st.Thread | None) -> list[str]:
    return list(row.category_list) if row is not None else []
