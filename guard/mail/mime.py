"""Raw bytes to the MIME tree, with the pieces of mail-parser the guard uses.

Limits applied to the raw bytes before the stdlib parser sees them (header field and
block sizes, MIME nesting depth), the parser fed in slices with the clock read between
them, and :func:`read_mail`: a re-implementation of the part of
``mailparser.parse_from_bytes`` whose results the guard reads, built on mail-parser's
internals (its address parser, its date parser, its defect wording), with the full
mail-parser run kept for the one case it recovers body parts.
"""

from __future__ import annotations

import email
import email.feedparser
import heapq
import logging
import re
from datetime import datetime
from email.message import Message as MimePart
from email.policy import compat32
from functools import lru_cache
from operator import itemgetter
from typing import Any

import mailparser
from mailparser.dates import date_diagnostics, parse_mail_date
from mailparser.exceptions import MailParserRecursionError
from mailparser.utils import get_addresses

from guard.mail.limits import MAX_HEADER_BLOCK_BYTES, MAX_HEADER_BYTES, MAX_MIME_DEPTH, Defects

# mail-parser logs a warning for every part it does not handle itself; that is noise here.
logging.getLogger("mailparser").setLevel(logging.ERROR)

_FEED_CHARS = 64 * 1024  # the MIME parser is fed this much at a time, the clock read between
_FIELD_START_RE = re.compile(rb"\n(?=[^ \t])")
# Both start with literals, which the regex engine finds fast; the second runs over the
# lower-cased bytes (same offsets). A case-insensitive pattern took 5 s on 50 MB.
_MIME_DELIMITER_RE = re.compile(rb"\n--([^\r\n]*?)[ \t]*\r?$", re.M)
_MIME_OPENER_RE = re.compile(
    rb"(boundary)\s*=\s*(?:\"([^\"\r\n]*)\"|([^\s;\"]+))"  # a boundary parameter
    rb"|content-type\s*:\s*(message)/"  # an attached message: one more level
)


# --------------------------------------------------------------------------------------
# Limits applied to the raw bytes before the MIME parser sees them.


def _header_end(data: bytes) -> int:
    """Offset of the blank line that ends the header block (len(data) when none)."""
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n", 0, crlf if crlf >= 0 else len(data))
    end = lf if lf >= 0 else crlf
    return end + 1 if end >= 0 else len(data)


def cap_headers(data: bytes, defects: Defects) -> bytes:
    """Header fields cut to MAX_HEADER_BYTES each and MAX_HEADER_BLOCK_BYTES in all.

    The stdlib parser keeps every header line as its own string (66 MB of folded Subject
    lines cost ~900 MB), so oversized fields are cut here, at a line end, before it
    reads them. Ordinary mail (a header block under the field limit) is returned as is.
    """
    end = _header_end(data)
    if end <= MAX_HEADER_BYTES:
        return data
    kept: list[bytes] = []
    total = 0
    start = 0
    starts = [m.end() for m in _FIELD_START_RE.finditer(data, 0, end)]
    for stop in [*starts, end]:
        if stop <= start:
            continue
        field = data[start:stop]
        name = field[: min(40, max(field.find(b":"), 0))].decode("ascii", "replace").strip()
        if len(field) > MAX_HEADER_BYTES:
            cut = field.rfind(b"\n", 0, MAX_HEADER_BYTES)
            field = field[: cut + 1] if cut > 0 else field[:MAX_HEADER_BYTES] + b"\r\n"
            defects.cut(f"header {name or '?'} longer than {MAX_HEADER_BYTES} bytes; cut")
        if total + len(field) > MAX_HEADER_BLOCK_BYTES:
            defects.cut(f"header block longer than {MAX_HEADER_BLOCK_BYTES} bytes; rest dropped")
            break
        kept.append(field)
        total += len(field)
        start = stop
    kept.append(data[end:] if end < len(data) else b"\r\n")
    return b"".join(kept)


def limit_mime_depth(data: bytes, defects: Defects) -> bytes:
    """Parts nested deeper than MAX_MIME_DEPTH made plain (their boundary ignored).

    The stdlib parser checks every line against every open boundary and recurses once
    per level: 300 levels and 100,000 lines took 9 s, ~1,000 levels raise
    RecursionError. This is a linear estimate of the nesting (a boundary parameter opens
    a level, a delimiter line closes those above its boundary, an attached message opens
    one that only its container closes); a boundary parameter or attached message type
    past the limit is renamed in place so the parser reads that part as text.
    """
    # The parser enters a multipart's part only after a delimiter line, so fewer such lines
    # than the limit cannot nest deeper (attached messages nest without one, but cost no
    # per-line checks; a chain too deep to parse fails and is marked unchecked).
    if data.count(b"\n--") <= MAX_MIME_DEPTH:
        return data
    stack: list[bytes | None] = []  # open boundaries; None for an attached message
    open_count: dict[bytes, int] = {}
    renamed: list[int] = []
    events = heapq.merge(
        ((m.start(), m) for m in _MIME_DELIMITER_RE.finditer(data)),
        ((m.start(), m) for m in _MIME_OPENER_RE.finditer(data.lower())),
        key=itemgetter(0),
    )
    for _, match in events:
        if match.re is _MIME_DELIMITER_RE:
            line = match.group(1)
            if line.endswith(b"--") and open_count.get(line[:-2]):
                name, closing = line[:-2], True
            elif open_count.get(line):
                name, closing = line, False
            else:
                continue
            while stack:
                top = stack.pop()
                if top is not None:
                    open_count[top] -= 1
                    if top == name:
                        break
            if not closing:
                stack.append(name)
                open_count[name] = open_count.get(name, 0) + 1
            continue
        if len(stack) >= MAX_MIME_DEPTH:
            renamed.append(match.start(1) if match.group(1) else match.start(4))
            continue
        if match.group(1):
            value = 2 if match.group(2) is not None else 3
            boundary = data[match.start(value) : match.end(value)]  # as written, not lowered
            stack.append(boundary)
            open_count[boundary] = open_count.get(boundary, 0) + 1
        else:
            stack.append(None)
    if not renamed:
        return data
    defects.cut(f"MIME parts nested deeper than {MAX_MIME_DEPTH} levels read as plain text")
    out = bytearray(data)
    for pos in renamed:
        out[pos] = ord("x")  # "boundary" -> "xoundary", "message/" -> "xessage/"
    return bytes(out)


def _mime_parse(data: bytes, defects: Defects) -> MimePart:
    """``email.message_from_bytes(data)``, fed in slices with the clock read between them;
    past the time budget the rest is not fed (the parser closes what it has)."""
    text = data.decode("ascii", "surrogateescape")  # as BytesParser does
    parser = email.feedparser.FeedParser(policy=compat32)
    for start in range(0, len(text), _FEED_CHARS):
        parser.feed(text[start : start + _FEED_CHARS])
        if start + _FEED_CHARS < len(text) and defects.late():
            break
    del text
    message: MimePart = parser.close()
    return message


# --------------------------------------------------------------------------------------
# Reading with mail-parser.


class Mail:
    """What ``parse_message`` takes from mail-parser: the MIME tree, the address headers
    and Date as mail-parser reads them, its defect notes, and (only after a recovery, see
    :func:`read_mail`) the body texts it decoded."""

    __slots__ = ("addresses", "categories", "date", "message", "notes", "text_html", "text_plain")

    def __init__(self, message: MimePart) -> None:
        self.message = message
        self.addresses: dict[str, list[tuple[str, str]]] = {}
        self.date: datetime | None = None
        self.notes: list[str] = []
        self.categories: set[str] = set()
        self.text_plain: list[Any] = []
        self.text_html: list[Any] = []


# The address headers the guard reads, in the order mail-parser reads them (sorted).
_ADDRESS_HEADERS = ("cc", "from", "reply-to", "to")
# Part defects after which mail-parser recovers body parts the stdlib parser misplaced.
RECOVERED_DEFECTS = frozenset({"StartBoundaryNotFoundDefect"})


def read_mail(data: bytes, defects: Defects | None = None) -> Mail:
    """Parse ``data`` with mail-parser's pieces, skipping the work whose results the guard
    never reads.

    ``mailparser.parse_from_bytes`` is ``email.message_from_bytes`` followed by
    ``MailParser.parse``, which on top of what is used here parses every Received header
    (a quarter to a third of its time on the public corpora), decodes every header into
    ``MailParser.mail`` and again into ``mail_partial``, copies each attachment into a
    base64 string and decodes every text part (the MIME walk decodes them anyway). This does
    the stdlib parse, reads From/To/Cc/Reply-To with mail-parser's address parser and
    Date with its date parser (same calls, same options, same defect records), and
    collects the stdlib's MIME defects in mail-parser's wording. Body parts are decoded
    by the MIME walk (:mod:`guard.mail.parse`). mail-parser's notes on headers the guard
    does not read (Received, Delivered-To, Bcc, Resent-Date) and on undecodable MIME header
    bytes are not made.

    Only for a multipart whose start boundary never came does the full
    ``mailparser.parse_from_bytes`` run, for the parts it recovers from the epilogue.
    """
    try:
        message = _mime_parse(data, defects or Defects())
        mail = Mail(message)
        part_notes: list[str] = []
        for part in message.walk():
            found = part.defects
            if found:
                where = part.get_content_type()
                for defect in found:
                    name = defect.__class__.__name__
                    mail.categories.add(name)
                    part_notes.append(f"{where}: {name}: {defect.__doc__}")
    except RecursionError as exc:  # as MailParser reports it
        raise MailParserRecursionError(
            "Message nesting too deep to parse (possible malicious multipart structure)"
        ) from exc
    if mail.categories & RECOVERED_DEFECTS:
        return _read_mail_fully(data)

    fetch = message.policy.header_fetch_parse
    values: dict[str, list[Any]] = {}
    dates: list[str] = []
    for name, raw in message.raw_items():
        key = name.lower()
        if key in _ADDRESS_HEADERS:
            values.setdefault(key, []).append(fetch(name, raw))
        elif key == "date":
            dates.append(raw)

    address_notes: list[str] = []
    for key in _ADDRESS_HEADERS:
        for occurrence, value in enumerate(values.get(key, ())):
            pairs, reasons = _mailboxes(value)
            if occurrence == 0:
                mail.addresses[key] = list(pairs)
            address_notes.extend(
                f"AddressHeaderDefect: {key}[{occurrence}]: {reason}" for reason in reasons
            )
    if address_notes:
        mail.categories.add("AddressHeaderDefect")
        mail.notes.extend(f"address-headers: {note}" for note in address_notes)

    date_notes: list[str] = []
    for occurrence, raw in enumerate(dates):
        result = parse_mail_date(raw)
        if occurrence == 0:
            mail.date = result.value
        date_notes.extend(
            f"DateHeaderDefect: {d['header']}[{d['occurrence']}]: {d['reason']}"
            for d in date_diagnostics(result, raw, "date", occurrence)
        )
    if date_notes:
        mail.categories.add("DateHeaderDefect")
        mail.notes.extend(f"date-headers: {note}" for note in date_notes)

    mail.notes.extend(part_notes)
    return mail


_MAILBOX_CACHE_CHARS = 1000


def _mailboxes(value: Any) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """mail-parser's reading of one address header: the (name, address) pairs as
    ``MailParser.mail`` gives them (no name when it repeats the address) and the reasons
    of its diagnostics.

    The same few values come back all the time (the mailbox owner in To, regular
    correspondents in From; 73 % of the From/To/Cc/Reply-To values of the public ham
    corpus repeat an earlier one), and mail-parser's address parser is its slowest
    part (~30 µs a header), so plain values of ordinary length are cached.
    """
    if isinstance(value, str) and len(value) <= _MAILBOX_CACHE_CHARS:
        return _cached_mailboxes(value)
    return _read_mailboxes(value)


def _read_mailboxes(value: Any) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    diagnostics: list[dict[str, Any]] = []
    found = get_addresses(value, defects=diagnostics, decode_names=True)
    pairs = tuple(("" if name == addr else name, addr) for name, addr in found if addr)
    return pairs, tuple(str(d["reason"]) for d in diagnostics)


_cached_mailboxes = lru_cache(maxsize=4096)(_read_mailboxes)


def _mailparser_notes(mail: Any) -> list[str]:
    """mail-parser's defect records (``MailParser.defects``) as one line each."""
    notes: list[str] = []
    for entry in mail.defects or ():
        if not isinstance(entry, dict):
            notes.append(str(entry))
            continue
        for where, found in entry.items():
            for note in found if isinstance(found, list) else [found]:
                notes.append(f"{where}: {note}")
    return notes


def _read_mail_fully(data: bytes) -> Mail:
    """``mailparser.parse_from_bytes``, all of it, as a :class:`Mail`."""
    parsed = mailparser.parse_from_bytes(data)
    mail = Mail(parsed.message)
    fields = parsed.mail
    mail.addresses = {key: fields.get(key) or [] for key in _ADDRESS_HEADERS}
    mail.date = parsed.date
    mail.notes = _mailparser_notes(parsed)
    mail.categories = set(parsed.defects_categories)
    mail.text_plain = list(parsed.text_plain)
    mail.text_html = list(parsed.text_html)
    return mail
