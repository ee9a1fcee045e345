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
silently. :func:`verify_bundle` recomputes every hash without extracting anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import smtplib
import stat
import struct
import sys
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import IO, Any, Protocol

import sqlalchemy as sa
from sqlmodel import Session, col

from guard import __version__
from guard import store as st
from guard.config import Config
from guard.errors import GuardError, Kind
from guard.mail.message import Message, parse_message
from guard.mailbox.imap import Connection, ImapError
from guard.mailbox.labels import CATEGORY_TITLES
from guard.mailbox.threads import strip_reply_prefixes
from guard.reports import templating
from guard.reports.digest import safe_text

__all__ = [
    "FORMAT",
    "MANIFEST",
    "MANIFEST_SUMS",
    "BundleError",
    "ExportError",
    "ExportResult",
    "ImapSource",
    "MessageOutcome",
    "MessageSource",
    "SourceUnavailable",
    "ThreadMatch",
    "VerifyReport",
    "bundle_zone",
    "export_bundle",
    "find_threads",
    "mail_manifest_hash",
    "verify_bundle",
]

FORMAT = "inbox-guard-evidence/1"
MANIFEST = "MANIFEST.json"
MANIFEST_SUMS = "MANIFEST.json.sha256"
README = "README.txt"
TIMELINE_HTML = "timeline.html"
TIMELINE_TXT = "timeline.txt"
MESSAGES_DIR = "messages"

MAX_BODY_CHARS = 20_000
"""Characters of a message's text shown in the timeline; the .eml always has all of it."""
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
_FILE_MODE = 0o100600  # regular file, rw for the owner only (zip "external attributes")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ExportError(GuardError):
    """The bundle cannot be written (nothing was left behind); one line saying why."""

    kind = Kind.OUTPUT


class BundleError(GuardError):
    """The file is not a readable bundle at all (missing, not a zip, truncated, corrupt)."""

    kind = Kind.INPUT


class SourceUnavailable(GuardError):
    """The server cannot give these messages; the message is the reason, in one line."""

    kind = Kind.NETWORK


# --------------------------------------------------------------------------- finding threads


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
        f.addresses.update(a.strip().lower() for a in [from_, *recipients.split(",")] if a)
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
    rows = _thread_rows(session, sorted(keys))
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


def _thread_rows(
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


# --------------------------------------------------------------------------- sources


class MessageSource(Protocol):
    """Gives the original bytes of messages the store kept no copy of."""

    def fetch(
        self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> dict[int, bytes]:
        """UID -> the message's bytes, for the UIDs still there; raises SourceUnavailable
        (with the reason) when none of them can be fetched."""
        ...

    def close(self) -> None: ...


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
            from guard.service.scan import ScanSettings

            try:
                settings = ScanSettings.from_config(self.config, account)
            except ConfigError:
                self._failed[account] = f"account {account!r} is not in the configuration"
                raise SourceUnavailable(self._failed[account]) from None
            try:
                conn = Connection(settings.server).open()
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


# --------------------------------------------------------------------------- collecting messages


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Item:
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


def _sort_key(item: _Item) -> tuple[Any, ...]:
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


def _check_store_copies(
    session: Session, items: Sequence[_Item], prefix_bytes: Mapping[str, int]
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
        elif _sha256(data) != sha:
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
    raw: bytes, item: _Item, prefix_sizes: Iterable[int]
) -> tuple[str, int | None] | None:
    """(note, prefix length) when the server's bytes are the message the guard read, None
    when not; the prefix length is None when the recorded hash covers the whole message.

    The guard hashes what it fetched; for a message above ``imap.max_message_bytes`` that
    is only a prefix, so the whole message is accepted when that prefix matches."""
    if _sha256(raw) == item.row.content_hash:
        return "", None
    for n in sorted({n for n in prefix_sizes if 0 < n < len(raw)}):
        if _sha256(raw[:n]) == item.row.content_hash:
            return (
                f"inbox-guard had read only the first {n} bytes of this message "
                "(imap.max_message_bytes); they match the SHA-256 it recorded, and the whole "
                "message was fetched from the server",
                n,
            )
    return None


def _fetch_from_server(
    items: Sequence[_Item], source: MessageSource | None, prefix_bytes: Mapping[str, int]
) -> None:
    groups: dict[tuple[str, str, int], list[_Item]] = {}
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
                    f"inbox-guard read: its SHA-256 is {_sha256(raw)}, not "
                    f"{item.row.content_hash}"
                )
                continue
            item.raw, (item.note, item.recorded_bytes) = raw, accepted


def _settle(items: Sequence[_Item]) -> None:
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


# --------------------------------------------------------------------------- names and dates


def _slug(subject: str, limit: int = 40) -> str:
    base, _reply = strip_reply_prefixes(subject)
    ascii_text = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "no-subject"


def _file_name(number: int, width: int, row: st.StoredMessage) -> str:
    when = row.date or row.internal_date
    day = when.strftime("%Y-%m-%d") if when is not None else "undated"
    return f"{MESSAGES_DIR}/{number:0{width}d}-{day}-{_slug(row.subject)}.eml"


_iso = st.iso_z


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
class When:
    """One moment shown in UTC and, when a zone is configured, in local time too."""

    utc: str
    local: str = ""


def _when(value: datetime | None, zone: tzinfo | None) -> When | None:
    if value is None:
        return None
    aware = value.replace(tzinfo=UTC)
    utc = aware.strftime("%Y-%m-%d %H:%M:%S UTC")
    if zone is None:
        return When(utc)
    local = aware.astimezone(zone)
    return When(utc, f"{local.strftime('%Y-%m-%d %H:%M:%S')} {local.tzname() or ''}".strip())


def bundle_zone(config: Config) -> tzinfo | None:
    """The zone the timeline shows beside UTC: the digest's configured ``timezone``."""
    if config.digest is not None and config.digest.timezone is not None:
        return config.digest.zone()
    return None


# --------------------------------------------------------------------------- timeline views


@dataclass(frozen=True)
class FindingView:
    title: str
    rule: str
    score: str
    where: str
    evidence: str
    explanation: str


@dataclass(frozen=True)
class AttachmentView:
    name: str
    type: str
    size: str


@dataclass(frozen=True)
class MessageView:
    """One message as the timeline shows it; every text from mail is already made safe
    (no control or bidi characters, links and domains defanged); HTML escaping is the
    template's job."""

    number: int
    file: str
    status: str
    note: str
    thread: int
    date: When | None
    received: When | None
    date_header: str
    direction: str
    folder: str
    uid: int
    uidvalidity: int
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    message_id: str
    sha256: str
    size: str
    findings: tuple[FindingView, ...]
    attachments: tuple[AttachmentView, ...]
    body: str
    body_shortened: bool
    defects: tuple[str, ...]


@dataclass(frozen=True)
class ThreadView:
    number: int
    account: str
    thread_id: str
    subject: str
    risk: str
    categories: tuple[str, ...]
    first: When | None
    last: When | None
    messages: int


@dataclass(frozen=True)
class Timeline:
    title: str
    created: When
    zone: str
    version: str
    threads: tuple[ThreadView, ...]
    messages: tuple[MessageView, ...]
    included: int
    partial: int
    missing: int


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    for unit, scale in (("KB", 1024), ("MB", 1024**2), ("GB", 1024**3)):
        if n < scale * 1024 or unit == "GB":
            return f"{n / scale:.1f} {unit} ({n:,} bytes)"
    return f"{n} bytes"  # pragma: no cover


def _plain(text: str, limit: int = 200) -> str:
    """One line of printable characters, for names that are not mail text and must stay
    exact (rule ids, folders, thread ids): "INBOX.Sent" is a folder, not a host."""
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _address(name: str, addr: str) -> str:
    name, addr = safe_text(name, 160), safe_text(addr, 160)
    if name and addr and name.lower() != addr.lower():
        return f"{name} <{addr}>"
    return addr or name


def _safe_block(text: str, limit: int = MAX_BODY_CHARS) -> tuple[str, bool]:
    """Mail text kept in lines, each made safe like :func:`guard.reports.digest.safe_text`; at most
    ``limit`` characters and two blank lines in a row."""
    out: list[str] = []
    total = 0
    blank = 0
    shortened = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        safe = safe_text(line, limit)
        blank = blank + 1 if not safe else 0
        if blank > 2:
            continue
        if total + len(safe) > limit:
            shortened = True
            break
        out.append(safe)
        total += len(safe) + 1
    return "\n".join(out).strip("\n"), shortened


def _finding_views(findings: Sequence[st.StoredFinding]) -> tuple[FindingView, ...]:
    return tuple(
        FindingView(
            title=CATEGORY_TITLES.get(f.category, safe_text(f.category, 40)),
            rule=_plain(f.rule, 120),
            score=f"{f.score:+g}",
            where=_plain(f.where, 40),
            evidence=safe_text(f.evidence, 600),
            explanation=safe_text(" ".join(f.explanation.split()), 1200),
        )
        for f in findings
    )


def _message_view(item: _Item, msg: Message | None, sha: str, zone: tzinfo | None) -> MessageView:
    r = item.row
    if msg is not None:
        sender = _address(msg.from_.name, msg.from_.addr) if msg.from_ else ""
        to = tuple(_address(a.name, a.addr) for a in msg.to)
        cc = tuple(_address(a.name, a.addr) for a in msg.cc)
        body, shortened = _safe_block(msg.text or msg.html_text)
        attachments = tuple(
            AttachmentView(
                name=safe_text(a.filename, 200) or "(no name)",
                type=safe_text(a.declared_type or a.sniffed_type, 100) or "unknown",
                size=_size(a.size),
            )
            for a in msg.attachments
        )
        defects = tuple(safe_text(d, 300) for d in msg.defects[:10])
    else:
        sender = _address(r.sender_name, r.sender)
        to = tuple(safe_text(a, 160) for a in r.recipients.split(",") if a)
        cc = ()
        body, shortened, attachments, defects = "", False, (), ()
    return MessageView(
        number=item.number,
        file=item.file or "",
        status=item.status,
        note=safe_text(item.note, 600),
        thread=item.thread_number,
        date=_when(r.date, zone),
        received=_when(r.internal_date, zone),
        date_header=safe_text(item.date_header or "", 200),
        direction="sent by you" if r.direction == "out" else "received",
        folder=_plain(r.folder),
        uid=r.uid,
        uidvalidity=r.uidvalidity,
        sender=sender or "(unknown sender)",
        to=to,
        cc=cc,
        subject=safe_text(r.subject if msg is None else msg.subject, 300) or "(no subject)",
        message_id=safe_text(r.message_id or "", 300),
        sha256=sha,
        size=_size(r.size if msg is None else msg.size),
        findings=_finding_views(item.findings),
        attachments=attachments,
        body=body,
        body_shortened=shortened,
        defects=defects,
    )


# --------------------------------------------------------------------------- rendering


_environment = templating.environment
_wrap = templating.wrap


def _wrap_block(text: str, width: int = 76, indent: str = "") -> str:
    """Each line of a message body wrapped on its own, blank lines kept."""
    return "\n".join(
        _wrap(line, width, indent) if line else indent.rstrip() for line in text.split("\n")
    )


def render_timeline(timeline: Timeline) -> tuple[str, str]:
    """(timeline.html, timeline.txt) for a bundle."""
    env = _environment()
    env.filters["wrap_block"] = _wrap_block
    context = {
        "t": timeline,
        "manifest": MANIFEST,
        "manifest_sums": MANIFEST_SUMS,
        "readme": README,
    }
    html = env.get_template("timeline.html.j2").render(context)
    text = env.get_template("timeline.txt.j2").render(context)
    return html, text


def _readme(timeline: Timeline) -> str:
    missing = ""
    if timeline.missing or timeline.partial:
        missing = (
            f"\nNOT COMPLETE: {timeline.missing} message(s) could not be included and "
            f"{timeline.partial} only in part; MANIFEST.json lists each of them with the "
            'reason (status "missing" or "partial"); "inbox-guard verify" counts a missing '
            "message as a failure unless given --allow-missing.\n"
        )
    total = len(timeline.messages)
    return f"""\
Evidence bundle made by inbox-guard {timeline.version} on {timeline.created.utc}.
It holds {total} message(s) of {len(timeline.threads)} conversation(s).
{missing}
WHAT IS IN IT

  messages/        Every message of the conversation, each exactly as the mail server
                   gave it to inbox-guard, byte for byte (.eml files: open them with any
                   mail program or a text editor). Numbered in date order.
  timeline.html    A readable summary: date (UTC), sender, recipients, subject, folder,
  timeline.txt     attachments, and what inbox-guard found. Made from the .eml files;
                   the .eml files are the originals.
  MANIFEST.json    For each message: its file, SHA-256 fingerprint and size, where it was
                   on the mail server (folder, UIDVALIDITY, UID and INTERNALDATE, the
                   time the server received it), its Message-ID and Date header. And the
                   SHA-256 fingerprint of every other file.
  MANIFEST.json.sha256
                   The SHA-256 fingerprint of MANIFEST.json itself (a file cannot
                   contain its own fingerprint), followed by those of all other files,
                   in the format the sha256sum tool reads.

HOW TO CHECK THAT NOTHING WAS CHANGED (with sha256sum alone)

  1. Unpack the zip file into an empty folder.
  2. Open a terminal in that folder and run:

         sha256sum -c MANIFEST.json.sha256

     (on macOS: shasum -a 256 -c MANIFEST.json.sha256)
  3. Every line must end in "OK". A file changed by even one byte shows "FAILED";
     a deleted file shows "No such file".
  4. The first line of MANIFEST.json.sha256 is the fingerprint of MANIFEST.json, and
     MANIFEST.json lists the fingerprint of every other file: that one value stands
     for the whole bundle. If the sender gave you this value separately (for example
     in the dispute form, or in the e-mail inbox-guard can send them when it makes
     the bundle), compare it too. Steps 1-3 only show that the files agree with each
     other: someone who rebuilt the whole bundle with other content and new
     fingerprints is caught only by comparing this value with one kept elsewhere.

  With inbox-guard installed,

         inbox-guard verify bundle.zip --expect <the fingerprint noted elsewhere>

  does all of this without unpacking: it prints the fingerprint of MANIFEST.json,
  compares it with the one given, checks every file, reports files added to the
  bundle and refuses entries that could not be unpacked safely.

  Each message's fingerprint must also be the one inbox-guard recorded when it first
  read the message ("recorded_sha256" in MANIFEST.json; "recorded_bytes", when
  present, says it covers only the first bytes inbox-guard read). That shows each
  message is what inbox-guard received; it cannot show that nobody changed the
  message on the mail server before inbox-guard first saw it. The mail provider can
  confirm a message from its folder, UIDVALIDITY and UID, or its Message-ID.
"""


# --------------------------------------------------------------------------- writing the zip


class _AtomicZip:
    """A zip written to a private temporary file beside ``out`` and moved into place only
    when complete: a crash or an error never leaves a partial bundle under ``out``.
    The file and every entry in it are 0600; entries carry one fixed time."""

    def __init__(self, out: Path, when: datetime, overwrite: bool) -> None:
        self.out = out
        self.overwrite = overwrite
        self.date_time = (when.year, when.month, when.day, when.hour, when.minute, when.second)
        self.names: list[str] = []
        directory = out.parent if str(out.parent) else Path(".")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=directory)
        except OSError as exc:
            raise ExportError(f"cannot write in '{directory}': {exc.strerror or exc}") from None
        self.tmp = Path(tmp)
        os.fchmod(fd, 0o600)
        self.fh: IO[bytes] = os.fdopen(fd, "w+b")
        self.zip = zipfile.ZipFile(self.fh, "w", compression=zipfile.ZIP_DEFLATED)

    def add(self, name: str, data: bytes) -> tuple[str, int]:
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3  # Unix, so that the mode below is honoured
        info.external_attr = _FILE_MODE << 16
        self.zip.writestr(info, data)
        self.names.append(name)
        return _sha256(data), len(data)

    def commit(self) -> None:
        self.zip.close()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        if self.overwrite:
            os.replace(self.tmp, self.out)
        else:
            try:
                os.link(self.tmp, self.out)  # atomic, and never replaces a file
            except FileExistsError:
                raise ExportError(
                    f"'{self.out}' already exists (use --force to replace it)"
                ) from None
            except OSError:  # a file system without hard links
                if self.out.exists():
                    raise ExportError(
                        f"'{self.out}' already exists (use --force to replace it)"
                    ) from None
                os.replace(self.tmp, self.out)
            self.tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.out.parent if str(self.out.parent) else ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.zip.close()
        with contextlib.suppress(Exception):
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


def _manifest_json(manifest: dict[str, Any]) -> bytes:
    # ASCII only: any byte of attacker text is spelled \uXXXX, so what an editor shows is
    # what is hashed, with no bidi or invisible characters.
    return (json.dumps(manifest, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def _sums(manifest_sha: str, files: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"{manifest_sha}  {MANIFEST}"] + [f"{sha}  {name}" for name, sha in files]
    return ("\n".join(lines) + "\n").encode("ascii")


# --------------------------------------------------------------------------- export


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


def _thread_view(
    number: int, match: ThreadMatch, row: st.Thread | None, zone: tzinfo | None
) -> ThreadView:
    cats = [c for c in (row.categories.split(",") if row is not None else []) if c]
    return ThreadView(
        number=number,
        account=_plain(match.account),
        thread_id=_plain(match.thread_id),
        subject=safe_text(match.subject, 300) or "(no subject)",
        risk=match.risk,
        categories=tuple(CATEGORY_TITLES.get(c, safe_text(c, 40)) for c in cats),
        first=_when(match.first_date, zone),
        last=_when(match.last_date, zone),
        messages=match.messages,
    )


def _manifest_message(item: _Item, sha: str | None, size: int | None) -> dict[str, Any]:
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
    items: list[_Item] = []
    with store.session() as session:
        thread_rows = _thread_rows(session, [(t.account, t.thread_id) for t in threads])
        for number, match in enumerate(threads, 1):
            rows = st.thread_messages(session, match.account, match.thread_id)
            found = st.findings_for(session, [r.id for r in rows if r.id is not None])
            items.extend(_Item(r, found.get(r.id or 0, []), number) for r in rows)
        if not items:
            raise ExportError("the store has no messages for this thread")
        _check_store_copies(session, items, prefix_bytes or {})
    _fetch_from_server(items, source, prefix_bytes or {})
    _settle(items)
    items.sort(key=_sort_key)
    width = max(3, len(str(len(items))))
    for number, item in enumerate(items, 1):
        item.number = number
        if item.status != "missing":
            item.file = _file_name(number, width, item.row)

    bundle = _AtomicZip(out, created, overwrite)
    try:
        manifest_messages: list[dict[str, Any]] = []
        views: list[MessageView] = []
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
            views.append(_message_view(item, msg, sha or "", zone))
        timeline = Timeline(
            title=_title(threads),
            created=_when(created, zone) or When(""),
            zone=_zone_label(zone, created),
            version=__version__,
            threads=tuple(
                _thread_view(i, t, thread_rows.get((t.account, t.thread_id)), zone)
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
            (README, _readme(timeline).encode()),
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
            "timezone": _zone_label(zone, created) if zone is not None else None,
            "threads": [
                {
                    "account": t.account,
                    "thread_id": t.thread_id,
                    "subject": t.subject,
                    "risk": t.risk,
                    "categories": _categories(thread_rows.get((t.account, t.thread_id))),
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
        manifest_sha, _ = bundle.add(MANIFEST, _manifest_json(manifest))
        bundle.add(MANIFEST_SUMS, _sums(manifest_sha, files))
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


def _stored(store: st.Store, item: _Item) -> bytes:
    with store.session() as session:
        data = st.evidence_bytes(session, item.row.content_hash)
    if data is None or _sha256(data) != item.row.content_hash:
        # checked a moment ago; only a concurrent change of the store can get here
        raise ExportError(f"the store's copy of message {item.number} changed during the export")
    return data


def _categories(row: st.Thread | None) -> list[str]:
    return [c for c in row.categories.split(",") if c] if row is not None else []


def _title(threads: Sequence[ThreadMatch]) -> str:
    if len(threads) == 1:
        return safe_text(threads[0].subject, 200) or "(no subject)"
    return f"{len(threads)} conversations"


def _zone_label(zone: tzinfo | None, at: datetime) -> str:
    if zone is None:
        return "UTC"
    return str(getattr(zone, "key", None) or zone.tzname(at.replace(tzinfo=UTC)) or "UTC")


# --------------------------------------------------------------------------- mailing the hash


def mail_manifest_hash(
    config: Config,
    result: ExportResult,
    threads: Sequence[ThreadMatch],
    now: datetime | None = None,
) -> list[str]:
    """Mail the bundle's MANIFEST.json SHA-256 to the digest address of each account of
    the bundle, over the digest's own SMTP connection code, so that a dated copy of it
    exists outside the bundle. Returns the recipients; raises ExportError (one line, no
    secret) when ``[digest]``/``[smtp]`` are missing or the mail could not be sent."""
    from guard.reports import digest as dg

    sent_at = (st.as_utc_naive(now) or st.utcnow()).replace(microsecond=0)
    try:
        settings = [dg._digest_settings(config, a) for a in sorted({t.account for t in threads})]
    except dg.DigestError as exc:
        raise ExportError(str(exc)) from None
    smtp = settings[0][1]
    recipients: dict[str, Any] = {}  # envelope address -> that account's digest settings
    for digest_settings, _smtp in settings:
        recipients.setdefault(parseaddr(digest_settings.to)[1], digest_settings)
    redact = dg._Redactor()
    try:
        client = dg._open(smtp, redact)
    except dg._SendFailure as failure:
        raise ExportError(failure.line) from None
    try:
        for address, digest_settings in recipients.items():
            message = _hash_message(result, threads, digest_settings, sent_at)
            try:
                client.send_message(
                    message,
                    from_addr=parseaddr(digest_settings.from_addr)[1],
                    to_addrs=[address],
                )
            except (smtplib.SMTPException, OSError, UnicodeError) as exc:
                raise ExportError(
                    dg._describe(exc, smtp, redact, "sending the bundle's hash")
                ) from None
    finally:
        dg._close(client)
    return [str(s.to) for s in recipients.values()]


def _hash_message(
    result: ExportResult, threads: Sequence[ThreadMatch], settings: Any, when: datetime
) -> EmailMessage:
    from guard.reports import digest as dg

    name = _plain(result.path.name, 120)
    conversations = "\n".join(
        f"    {_plain(t.thread_id, 80)} (account {_plain(t.account, 60)}, {t.messages} message(s))"
        for t in threads
    )
    total = len(result.messages)
    body = f"""\
inbox-guard wrote an evidence bundle on {when:%Y-%m-%d %H:%M:%S} UTC.

  File:                   {name}
  MANIFEST.json SHA-256:  {result.manifest_sha256}
  Messages:               {result.included} of {total} in the bundle
  Conversations:
{conversations}

Keep this e-mail: it is a dated copy of the bundle's fingerprint, kept outside the
bundle. Anyone who rebuilt the bundle with other content would have to change this
fingerprint too. To check the bundle later:

    inbox-guard verify {name} --expect {result.manifest_sha256}

or unpack it and compare the first value in MANIFEST.json.sha256 with the one above.
"""
    msg = EmailMessage()
    msg["From"] = settings.from_addr
    msg["To"] = settings.to
    msg["Subject"] = f"inbox-guard evidence bundle: MANIFEST.json SHA-256 {result.manifest_sha256}"
    msg["Date"] = format_datetime(when.replace(tzinfo=UTC))
    msg["Message-ID"] = dg._new_message_id(settings.from_addr, when)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(body, subtype="plain", charset="utf-8")
    return msg


# --------------------------------------------------------------------------- verification


@dataclass
class VerifyReport:
    """What :func:`verify_bundle` found. ``problems`` are one line each, the first one
    naming the first altered, missing or extra file (or the --expect mismatch); names in
    them come from the zip and must be made safe before they are shown on a terminal."""

    messages: int = 0  # message files matching both the manifest and the recorded hash
    files: int = 0  # all files that checked out, the two manifest files included
    missing: int = 0  # messages the manifest itself lists as not included
    partial: int = 0
    prefix_only: int = 0  # messages whose recorded hash covers only their first bytes
    manifest_sha256: str | None = None  # of MANIFEST.json as the bundle holds it
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Expected:
    name: str
    sha256: str
    size: int | None
    what: str  # "" or, for a message, which one it is
    recorded: str | None = None  # a message's recorded_sha256
    recorded_bytes: int | None = None  # ... when it covers only the first bytes


class _Unreadable(GuardError):
    """A member that cannot be read safely: the bundle is not readable (exit 2)."""


_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_DRIVE = re.compile(r"[A-Za-z]:")
_DEVICES = frozenset(
    {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)}
)


def _unsafe_reason(name: str) -> str | None:
    """Why ``name`` is not a plain relative path inside the bundle (None: it is one).

    Only names like those an export writes pass: "/"-separated parts of letters, digits,
    ".", "_" and "-", none starting with a dot, none a Windows device name."""
    if not name:
        return "an empty name"
    if "\x00" in name:
        return "a NUL character"
    if name.startswith(("/", "\\")):
        return "an absolute path"
    if _DRIVE.match(name):
        return "a drive letter"
    if "\\" in name:
        return "a backslash"
    parts = name.split("/")
    if ".." in parts:
        return "a '..' part"
    if any(p in ("", ".") for p in parts):
        return "an empty or '.' part"
    if any(p.startswith(".") for p in parts):
        return "a dot-file name"
    if not all(_COMPONENT.fullmatch(p) for p in parts):
        return "characters other than letters, digits, '.', '_' and '-'"
    if any(p.endswith(".") for p in parts):
        return "a part ending in a dot"
    if any(p.split(".", 1)[0].lower() in _DEVICES for p in parts):
        return "a Windows device name"
    return None


def _safe_name(name: str) -> bool:
    return _unsafe_reason(name) is None


def _kind(info: zipfile.ZipInfo) -> str:
    """file, dir, symlink or special, from the Unix mode (when there is one) and the name."""
    fmt = stat.S_IFMT(info.external_attr >> 16)
    if fmt == stat.S_IFLNK:
        return "symlink"
    if fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
        return "special"
    if fmt == stat.S_IFDIR or info.filename.endswith("/"):
        return "dir"
    return "file"


def _fold_name(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def _check_entries(infos: Sequence[zipfile.ZipInfo], report: VerifyReport) -> set[str]:
    """Report every entry an unzip tool could not write safely as a plain file of the
    bundle's folder: links, devices, unsafe names, duplicates, names that collide when
    letter case is ignored, a name that is both a file and a folder. Returns the names
    reported, so that they are not reported again."""
    flagged: set[str] = set()
    seen: set[str] = set()
    folded: dict[str, str] = {}
    files: dict[str, str] = {}  # folded name -> name, for plain files
    folders: set[str] = set()  # folded names of every folder some entry is in or is

    def flag(name: str, problem: str) -> None:
        report.problems.append(f"{name}: {problem}")
        flagged.add(name)

    for info in infos:
        name = info.filename
        kind = _kind(info)
        base = name[:-1] if kind == "dir" and name.endswith("/") else name
        reason = "a NUL character" if info.orig_filename != name else _unsafe_reason(base)
        if name in seen:
            flag(name, "appears more than once in the zip")
            continue
        seen.add(name)
        if kind == "symlink":
            flag(name, "a symbolic link, not a file (unpacked, it could point anywhere)")
        elif kind == "special":
            flag(name, "a device, pipe or socket entry, not a file")
        elif reason is not None:
            flag(name, f"unsafe name ({reason})")
        elif kind == "dir" and info.file_size:
            flag(name, "a folder entry with content")
        key = _fold_name(base)
        other = folded.setdefault(key, base)
        if other != base and name not in flagged:
            flag(
                name,
                f"differs from {other} only in letter case (unpacked on Windows or macOS, "
                "one would overwrite the other)",
            )
        parts = key.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if kind == "dir":
            folders.add(key)
        elif kind == "file":
            files.setdefault(key, name)
    for key, name in files.items():
        if key in folders and name not in flagged:
            flag(name, "is both a file and a folder in the zip")
    return flagged


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... name length, extra length
_ENCRYPTED = 0x1
_DATA_DESCRIPTOR = 0x8
_UTF8_NAME = 0x800
_ZIP64_SIZE = 0xFFFFFFFF


@dataclass(frozen=True)
class _Layout:
    start: int  # first byte of the member's compressed data
    end: int  # first byte after it


def _layout(fh: IO[bytes], info: zipfile.ZipInfo, total: int) -> _Layout:
    """Where a member's data is, after checking from its headers alone (nothing is
    decompressed) that it can be read: not encrypted, stored or deflated, and its local
    header agreeing with the central directory about its name, method and sizes."""
    name = info.filename
    if info.flag_bits & _ENCRYPTED:
        raise _Unreadable(f"{name}: encrypted (an evidence bundle never is)")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Unreadable(
            f"{name}: compressed with method {info.compress_type}, which evidence bundles "
            "never use (only stored and deflated are read)"
        )
    fh.seek(info.header_offset)
    head = fh.read(_LOCAL_HEADER.size)
    if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
        raise _Unreadable(f"{name}: its local header is missing")
    _sig, _version, flags, method, _time, _date, crc, csize, usize, nlen, xlen = (
        _LOCAL_HEADER.unpack(head)
    )
    try:
        wanted = info.orig_filename.encode("utf-8" if info.flag_bits & _UTF8_NAME else "cp437")
    except UnicodeEncodeError:
        wanted = b""
    if fh.read(nlen) != wanted:
        raise _Unreadable(f"{name}: its local header names another file")
    if flags & _ENCRYPTED:
        raise _Unreadable(f"{name}: encrypted (an evidence bundle never is)")
    if method != info.compress_type:
        raise _Unreadable(f"{name}: its two zip headers disagree on its compression")
    sizes_given = not flags & _DATA_DESCRIPTOR and _ZIP64_SIZE not in (csize, usize)
    if sizes_given and (csize, usize, crc) != (info.compress_size, info.file_size, info.CRC):
        raise _Unreadable(f"{name}: its two zip headers disagree on its size or checksum")
    start = info.header_offset + _LOCAL_HEADER.size + nlen + xlen
    end = start + info.compress_size
    if end > total:
        raise _Unreadable(f"{name}: its data runs past the end of the file (truncated)")
    return _Layout(start, end)


def _layouts(fh: IO[bytes], infos: Sequence[zipfile.ZipInfo], total: int) -> dict[int, _Layout]:
    """The layout of every member (by its index in ``infos``); members may not overlap."""
    layouts = {i: _layout(fh, info, total) for i, info in enumerate(infos)}
    previous_end, previous = -1, ""
    for i in sorted(layouts, key=lambda i: infos[i].header_offset):
        if infos[i].header_offset < previous_end:
            raise _Unreadable(f"{infos[i].filename}: overlaps {previous} in the zip")
        previous_end, previous = layouts[i].end, infos[i].filename
    return layouts


def _inflate(fh: IO[bytes], info: zipfile.ZipInfo, layout: _Layout) -> Iterator[bytes]:
    """The member's bytes, a chunk at a time. Never more than the size its header declares
    is decompressed: a member that would inflate beyond it, is damaged, is shorter than it
    or fails its CRC raises _Unreadable."""
    name = info.filename
    fh.seek(layout.start)
    left_in, left_out, crc = info.compress_size, info.file_size, 0

    def read() -> bytes:
        nonlocal left_in
        chunk = fh.read(min(_CHUNK, left_in))
        if not chunk:
            raise _Unreadable(f"{name}: its data ends early (truncated)")
        left_in -= len(chunk)
        return chunk

    def take(out: bytes) -> bytes:
        nonlocal left_out, crc
        if len(out) > left_out:
            raise _Unreadable(
                f"{name}: inflates beyond the {info.file_size} bytes its zip header declares"
            )
        left_out -= len(out)
        crc = zlib.crc32(out, crc)
        return out

    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise _Unreadable(f"{name}: stored, but its two sizes differ")
        while left_in:
            yield take(read())
    else:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        pending = b""
        while not inflater.eof:
            if not pending and left_in:
                pending = read()
            given = len(pending)
            try:  # at most one chunk, and at most one byte more than may remain
                out = inflater.decompress(pending, min(left_out + 1, _CHUNK))
            except zlib.error as exc:
                raise _Unreadable(f"{name}: damaged compressed data ({exc})") from None
            pending = inflater.unconsumed_tail
            if out:
                yield take(out)
            elif not inflater.eof and len(pending) == given and not (given == 0 and left_in):
                raise _Unreadable(f"{name}: its compressed data ends early")
        if pending or inflater.unused_data or left_in:
            raise _Unreadable(f"{name}: data after the end of its compressed stream")
    if left_out:
        raise _Unreadable(f"{name}: shorter than the {info.file_size} bytes its header declares")
    if crc != info.CRC:
        raise _Unreadable(f"{name}: fails its CRC check (damaged)")


def _read_member(fh: IO[bytes], info: zipfile.ZipInfo, layout: _Layout) -> bytes:
    return b"".join(_inflate(fh, info, layout))


def _hash_member(
    fh: IO[bytes], info: zipfile.ZipInfo, layout: _Layout, prefix: int | None = None
) -> tuple[str, str | None]:
    """SHA-256 of the member and, with ``prefix``, of its first ``prefix`` bytes."""
    whole = hashlib.sha256()
    head = hashlib.sha256() if prefix is not None else None
    seen = 0
    for chunk in _inflate(fh, info, layout):
        whole.update(chunk)
        if head is not None and prefix is not None and seen < prefix:
            head.update(chunk[: prefix - seen])
        seen += len(chunk)
    return whole.hexdigest(), head.hexdigest() if head is not None else None


def _message_label(entry: dict[str, Any], total: int) -> str:
    parts = [f"message {entry.get('number', '?')} of {total}"]
    date = entry.get("date_utc") or (entry.get("imap") or {}).get("internal_date")
    if isinstance(date, str):
        parts.append(date)
    if isinstance(entry.get("from"), str) and entry["from"]:
        parts.append(f"from {entry['from']}")
    if isinstance(entry.get("message_id"), str) and entry["message_id"]:
        parts.append(f"Message-ID {entry['message_id']}")
    return ", ".join(parts)


def _size_of(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _expected_from_manifest(
    manifest: dict[str, Any], report: VerifyReport, allow_missing: bool
) -> list[_Expected] | None:
    messages = manifest.get("messages")
    files = manifest.get("files")
    if not isinstance(messages, list) or not isinstance(files, list):
        report.problems.append(f"{MANIFEST}: has no list of messages and files")
        return None
    out: list[_Expected] = []
    total = len(messages)
    statuses: dict[str, int] = {"included": 0, "partial": 0, "missing": 0}
    for entry in messages:
        if not isinstance(entry, dict):
            report.problems.append(f"{MANIFEST}: a message entry is not an object")
            continue
        label = _message_label(entry, total)
        status = entry.get("status")
        if status not in statuses:
            report.problems.append(f"{MANIFEST}: {label} has an unknown status")
            continue
        statuses[status] += 1
        recorded = entry.get("recorded_sha256")
        if not isinstance(recorded, str) or not _HEX64.fullmatch(recorded):
            report.problems.append(
                f"{MANIFEST}: {label} has no valid recorded_sha256 (the hash inbox-guard "
                "recorded when it first saw the message)"
            )
            recorded = None
        if status == "missing":
            report.missing += 1
            if not allow_missing:
                report.problems.append(
                    f"{MANIFEST}: {label} is listed as missing, so the bundle does not hold "
                    "it (--allow-missing accepts that)"
                )
            continue
        if status == "partial":
            report.partial += 1
        name, sha, size = entry.get("file"), entry.get("sha256"), _size_of(entry.get("size"))
        if not isinstance(name, str) or not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            report.problems.append(f"{MANIFEST}: {label} has no valid file name and SHA-256")
            continue
        if size is None:
            report.problems.append(f"{MANIFEST}: {label} has no valid size")
            continue
        prefix = entry.get("recorded_bytes")
        if prefix is not None and (_size_of(prefix) is None or not 0 < prefix < size):
            report.problems.append(f"{MANIFEST}: {label} has an invalid recorded_bytes")
            continue
        out.append(_Expected(name, sha, size, label, recorded, prefix))
    counts = manifest.get("counts")
    wanted_counts = {"messages": total, **statuses}
    if not isinstance(counts, dict) or any(counts.get(k) != v for k, v in wanted_counts.items()):
        report.problems.append(f"{MANIFEST}: its counts do not match its list of messages")
    for entry in files:
        name = entry.get("file") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            report.problems.append(f"{MANIFEST}: a file entry has no valid name and SHA-256")
            continue
        size = _size_of(entry.get("size"))
        if size is None:
            report.problems.append(f"{MANIFEST}: {name} has no valid size")
            continue
        out.append(_Expected(name, sha, size, ""))
    return out


def _parse_sums(data: bytes, report: VerifyReport) -> dict[str, str] | None:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        report.problems.append(f"{MANIFEST_SUMS}: not a list of SHA-256 sums (not ASCII text)")
        return None
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if m is None:
            report.problems.append(f"{MANIFEST_SUMS}: line {number} is not '<sha256>  <file>'")
            continue
        if m.group(2) in sums:
            report.problems.append(f"{MANIFEST_SUMS}: {m.group(2)} is listed twice")
        sums[m.group(2)] = m.group(1)
    return sums


def _normal_hash(value: str) -> str | None:
    text = value.strip().lower()
    return text if _HEX64.fullmatch(text) else None


def verify_bundle(
    path: Path, *, expect: str | None = None, allow_missing: bool = False
) -> VerifyReport:
    """Check a bundle, reading the zip in place (nothing is extracted, so names such as
    ``../x`` are only reported): every file against MANIFEST.json and
    MANIFEST.json.sha256, every message also against the hash inbox-guard recorded when
    it first saw it; with ``expect``, MANIFEST.json against that SHA-256 (noted at export
    time, kept elsewhere). A message the manifest lists as missing is a problem unless
    ``allow_missing``. Raises BundleError when the file is not a readable zip (missing,
    not a zip, truncated, or a member that is encrypted, uses another compression, is
    damaged or inflates beyond its declared size); nothing is decompressed beyond the
    sizes the zip declares, and those are checked against the manifest first."""
    wanted = None
    if expect is not None:
        wanted = _normal_hash(expect)
        if wanted is None:
            raise ValueError("the expected hash must be 64 hexadecimal digits (a SHA-256)")
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise BundleError(f"cannot read '{path}': no such file") from None
    except IsADirectoryError:
        raise BundleError(f"cannot read '{path}': it is a directory") from None
    except OSError as exc:
        raise BundleError(f"cannot read '{path}': {exc.strerror or exc}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        raise BundleError(
            f"'{path}' is not a readable zip file (truncated or corrupt): {exc}"
        ) from None
    with zf:
        try:
            with path.open("rb") as fh:
                report = _verify(zf, fh, os.fstat(fh.fileno()).st_size, allow_missing)
        except _Unreadable as exc:
            raise BundleError(f"'{path}' is corrupt or unsafe: cannot read {exc}") from None
        except OSError as exc:
            raise BundleError(f"cannot read '{path}': {exc.strerror or exc}") from None
    if wanted is not None and report.manifest_sha256 != wanted:
        got = report.manifest_sha256
        report.problems.insert(
            0,
            f"{MANIFEST}: its SHA-256 is {got}, not the expected {wanted}: this is not the "
            "bundle whose hash was noted"
            if got is not None
            else f"{MANIFEST}: missing, so it cannot be compared with the expected {wanted}",
        )
    return report


def _load_manifest(data: bytes, report: VerifyReport) -> dict[str, Any] | None:
    try:
        loaded = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        report.problems.append(f"{MANIFEST}: damaged (not valid JSON)")
        return None
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
        report.problems.append(f"{MANIFEST}: not an inbox-guard evidence manifest ({FORMAT})")
        return None
    return loaded


def _verify(zf: zipfile.ZipFile, fh: IO[bytes], total: int, allow_missing: bool) -> VerifyReport:
    report = VerifyReport()
    infos = zf.infolist()
    layouts = _layouts(fh, infos, total)  # nothing unreadable, before anything is read
    flagged = _check_entries(infos, report)
    entries: dict[str, tuple[zipfile.ZipInfo, _Layout]] = {}
    for i, info in enumerate(infos):
        entries.setdefault(info.filename, (info, layouts[i]))

    def small(name: str) -> bytes | None:
        if name in flagged:
            return None  # already reported (a link, a duplicate ...): not read
        if name not in entries:
            report.problems.append(f"{name}: missing from the bundle")
            return None
        info, layout = entries[name]
        if info.file_size > MAX_MANIFEST_BYTES:
            report.problems.append(f"{name}: too large to be a manifest")
            return None
        return _read_member(fh, info, layout)

    manifest_data = small(MANIFEST)
    if manifest_data is not None:
        report.manifest_sha256 = _sha256(manifest_data)
    data = small(MANIFEST_SUMS)
    sums: dict[str, str] | None = None
    sums_ok = False
    if data is not None:
        before = len(report.problems)
        sums = _parse_sums(data, report)
        sums_ok = len(report.problems) == before
    if manifest_data is not None and sums is not None:
        recorded = sums.get(MANIFEST)
        if recorded is None:
            report.problems.append(f"{MANIFEST_SUMS}: has no line for {MANIFEST}")
        elif recorded != report.manifest_sha256:
            report.problems.insert(
                0,
                f"{MANIFEST}: altered (its SHA-256 is not the one in {MANIFEST_SUMS}; "
                "one of the two was changed)",
            )
        else:
            report.files += 1
    manifest = _load_manifest(manifest_data, report) if manifest_data is not None else None

    expected = (
        _expected_from_manifest(manifest, report, allow_missing) if manifest is not None else None
    )
    if expected is None and sums is not None:  # no usable manifest: check what the sums say
        expected = [_Expected(n, h, None, "") for n, h in sums.items() if n != MANIFEST]
    expected = expected or []

    listed: set[str] = set()
    for exp in expected:
        what = f" ({exp.what})" if exp.what else ""
        if exp.name in listed:
            report.problems.append(f"{MANIFEST}: {exp.name} is listed twice")
            continue
        listed.add(exp.name)
        if exp.name in flagged:
            continue  # reported with the entry itself
        if not _safe_name(exp.name):
            report.problems.append(f"{exp.name}: unsafe file name in {MANIFEST}{what}")
            continue
        found = entries.get(exp.name)
        if found is None:
            report.problems.append(f"{exp.name}: missing from the bundle{what}")
            continue
        info, layout = found
        if _kind(info) != "file":
            report.problems.append(f"{exp.name}: not a plain file in the zip{what}")
            continue
        if exp.size is not None and info.file_size != exp.size:  # checked before inflating
            report.problems.append(
                f"{exp.name}: altered (its size in the zip, {info.file_size} bytes, is not "
                f"the {exp.size} bytes in {MANIFEST}){what}"
            )
            continue
        sha, head = _hash_member(fh, info, layout, exp.recorded_bytes)
        if sha != exp.sha256:
            report.problems.append(f"{exp.name}: altered (SHA-256 differs from {MANIFEST}){what}")
            continue
        if exp.what and exp.recorded is not None and (head or sha) != exp.recorded:
            report.problems.append(
                f"{exp.name}: not the message inbox-guard recorded when it first saw it "
                f"(its SHA-256 is not the recorded_sha256 in {MANIFEST}){what}"
            )
            continue
        report.files += 1
        if exp.what and exp.recorded is not None:
            report.messages += 1
            report.prefix_only += exp.recorded_bytes is not None

    for name, (info, _) in entries.items():
        if name in listed or name in flagged or name in (MANIFEST, MANIFEST_SUMS):
            continue
        if _kind(info) == "dir":
            continue  # a folder entry (the bundle unpacked and zipped again): no content
        report.problems.append(f"{name}: extra file, not listed in {MANIFEST}")

    if manifest is not None and sums is not None:
        from_manifest = {e.name: e.sha256 for e in expected}
        from_sums = {n: h for n, h in sums.items() if n != MANIFEST}
        consistent = sums_ok and sums.get(MANIFEST) == report.manifest_sha256
        for name in sorted(set(from_manifest) | set(from_sums)):
            if from_manifest.get(name) != from_sums.get(name):
                consistent = False
                report.problems.append(
                    f"{MANIFEST_SUMS}: the line for {name} does not match {MANIFEST}"
                )
        if consistent:
            report.files += 1  # every line of it checked out
    return report
