"""Raw RFC 5322 bytes to an immutable :class:`Message`, built with mail-parser.

This module is the only place that looks at MIME. Everything downstream (the policy
engine, the store, the digest) works on the plain data here. Parsing never raises:
whatever could not be read is reported in ``Message.defects`` and the rest is kept.
"""

from __future__ import annotations

import binascii
import codecs
import contextlib
import ctypes
import email
import email.feedparser
import email.utils
import heapq
import html as html_lib
import io
import logging
import os
import re
import sys
import time
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message as MimePart
from email.parser import BytesParser
from email.policy import compat32
from functools import lru_cache
from operator import itemgetter
from typing import Any

import filetype
import mailparser
from mailparser.dates import date_diagnostics, parse_mail_date
from mailparser.exceptions import MailParserRecursionError
from mailparser.utils import get_addresses
from selectolax.lexbor import LexborHTMLParser

# mail-parser logs a warning for every part it does not handle itself; that is noise here.
logging.getLogger("mailparser").setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox from an address header: display name and address (lower-cased)."""

    name: str
    addr: str

    @property
    def domain(self) -> str:
        """The part after the last ``@``, lower-cased, or "" when there is none."""
        return self.addr.rpartition("@")[2].lower() if "@" in self.addr else ""


@dataclass(frozen=True, slots=True)
class Link:
    """A hyperlink as the reader sees it (``text``) and where it really goes (``href``)."""

    text: str
    href: str


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attached part.

    ``declared_type`` is the Content-Type the sender wrote, ``sniffed_type`` what the
    bytes look like (magic numbers), ``text`` the decoded text of a small text
    attachment (``""`` otherwise), ``encrypted`` is True for password-protected archives.
    """

    filename: str
    declared_type: str
    sniffed_type: str
    size: int
    text: str = ""
    encrypted: bool = False
    html_traits: tuple[str, ...] = ()
    """For an attached web page (HTML, SVG, MHT): what its raw markup holds, read before
    any text extraction: ``"form"``, ``"password"`` (a password input), ``"script"``,
    ``"redirect"`` (a meta refresh, or a script that sets the page location) and
    ``"obfuscated"`` (a script that decodes or writes itself: atob, unescape, eval...)."""
    qr_codes: tuple[str, ...] = ()
    """The texts of the QR codes found in an image, whatever they say."""
    links: tuple[Link, ...] = ()
    """Web links the attachment shows its reader: a QR code's URL (text "QR code in
    <file>"), the links of a calendar invite. They are in ``Message.links`` too."""
    calendar: bool = False
    """True for a calendar invite (text/calendar, .ics); ``text`` is then its summary,
    location, description and links rather than the raw iCalendar source."""


@dataclass(frozen=True, slots=True)
class AuthResults:
    """Verdicts from the receiving server's Authentication-Results header.

    Each verdict is the lower-cased result word (``pass``, ``fail``, ``softfail``,
    ``neutral``, ``none``, ``temperror``, ``permerror``) or ``""`` when absent.
    ``dkim_domains`` lists the ``header.d`` domains of passing DKIM signatures.
    """

    spf: str = ""
    dkim: str = ""
    dmarc: str = ""
    dkim_domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Message:
    """Everything the guard needs to know about one message, as plain immutable data."""

    from_: Address | None = None
    reply_to: tuple[Address, ...] = ()
    return_path: str = ""
    sender: Address | None = None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    subject: str = ""
    date: datetime | None = None
    message_id: str = ""
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    text: str = ""
    html_text: str = ""
    links: tuple[Link, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    auth: AuthResults = field(default_factory=AuthResults)
    list_id: str = ""
    auto_submitted: str = ""
    precedence: str = ""
    list_unsubscribe: str = ""
    defects: tuple[str, ...] = ()
    size: int = 0
    unchecked: tuple[str, ...] = ()
    """Why the message was not read whole (a limit cut its text, too many parts, a parse
    that failed or ran out of time), one short line each; empty when it was read whole.
    The policy engine judges what was read and marks the verdict "unchecked" too."""

    @property
    def body(self) -> str:
        """The readable body: the plain text part, else the text extracted from HTML."""
        return self.text if self.text.strip() else self.html_text

    @property
    def is_bulk(self) -> bool:
        """True for list mail, newsletters and automatic replies."""
        return bool(
            self.list_id
            or self.list_unsubscribe
            or self.precedence in ("bulk", "list", "junk")
            or (self.auto_submitted and self.auto_submitted != "no")
        )


# --------------------------------------------------------------------------------------
# Limits against hostile input.

MAX_TEXT_CHARS = 1_000_000
"""Cap for every text field of :class:`Message` (``text``, ``html_text``, subject...)."""
MAX_ATTACHMENTS = 200
MAX_LINKS = 500
MAX_PARTS = 1_000
"""MIME parts visited at most; a message with more is read only that far."""
MAX_DEFECTS = 100
TAIL_PARTS = 50
"""Past MAX_PARTS, the last this many parts are read too (the end of a padded message)."""
MAX_HTML_DEPTH = 256
"""Elements nested deeper than this are read as text without their markup."""
MAX_HTML_TAGS = 20_000
"""Start tags of one HTML part handed to the HTML parser; the rest is read as text."""
MAX_HEADER_BYTES = 256 * 1024
"""Bytes of one header field kept before parsing (Subject, References...); the rest dropped."""
MAX_HEADER_BLOCK_BYTES = 1024 * 1024
"""Bytes of the whole header block kept before parsing; later header fields dropped."""
MAX_MIME_DEPTH = 32
"""Multipart/message parts nested deeper than this are read as one text part."""
TIME_BUDGET = 5.0
"""Seconds one message may take to read; past it no more parts are read ("unchecked")."""
ATTACHMENT_TEXT_MAX_SIZE = 256 * 1024
"""Attachments at least this big (decoded bytes) get no ``text``."""
ATTACHMENT_TEXT_CHARS = 64 * 1024
"""``Attachment.text`` is cut to this many characters."""
MAX_HREF_CHARS = 8192
"""A link's ``href`` is cut to this many characters (``data:`` and ``javascript:``
links to SCRIPT_HREF_CHARS): enough to judge it, never a whole embedded document."""
SCRIPT_HREF_CHARS = 1024
MAX_ATTACHMENT_LINKS = 50
"""Links taken from attachments (QR codes, calendar invites) per message, at most."""
HTML_SCAN_BYTES = 512 * 1024
"""Of an attached web page, this many bytes of its head and of its tail are searched for
forms, scripts and redirects (the search is linear: simple patterns, bounded repeats)."""
QR_MAX_IMAGES = 8
"""Images per message searched for QR codes; further images are not (a defect note says
so). Tiny images (tracking pixels, icons under QR_MIN_SIDE pixels) do not count."""
QR_MAX_IMAGE_BYTES = 1024 * 1024
"""Images bigger than this (decoded bytes) are not searched for QR codes."""
QR_MAX_PIXELS = 4_000_000
"""Images with more pixels than this are not decoded (Pillow's decompression-bomb
limit is set to it too, and its error caught)."""
QR_MIN_SIDE = 21
QR_MAX_CODES = 4
"""QR codes kept per image; each text cut to QR_TEXT_CHARS."""
QR_TEXT_CHARS = 2048

_DEFECT_CHARS = 300
_MAX_UNCHECKED = 20
_FEED_CHARS = 64 * 1024  # the MIME parser is fed this much at a time, the clock read between
_MAX_PART_BYTES = 4 * MAX_TEXT_CHARS  # bytes of one body part ever handed to a codec
_MAX_HTML_CHARS = 2 * MAX_TEXT_CHARS  # characters of one HTML part ever parsed
_FULL_DECODE_CHARS = 1_500_000  # base64 attachments up to this long are decoded whole
_PEEK_BYTES = 64 * 1024  # otherwise only this much of the head and of the tail is decoded
_SNIFF_BYTES = 8192
_TOO_MANY_ATTACHMENTS = f"more than {MAX_ATTACHMENTS} attachments; the rest ignored"

# Headers read from the raw header list, first occurrence of each.
_WANTED_HEADERS = frozenset(
    {
        "from",
        "reply-to",
        "sender",
        "to",
        "cc",
        "return-path",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "authentication-results",
        "list-id",
        "auto-submitted",
        "precedence",
        "list-unsubscribe",
        "content-type",
        "content-disposition",
        "content-transfer-encoding",
    }
)

# --------------------------------------------------------------------------------------
# Compiled once.

_NEWLINES_RE = re.compile(r"\r\n?")
_FIELD_START_RE = re.compile(rb"\n(?=[^ \t])")
# Both start with literals, which the regex engine finds fast; the second runs over the
# lower-cased bytes (same offsets). A case-insensitive pattern took 5 s on 50 MB.
_MIME_DELIMITER_RE = re.compile(rb"\n--([^\r\n]*?)[ \t]*\r?$", re.M)
_MIME_OPENER_RE = re.compile(
    rb"(boundary)\s*=\s*(?:\"([^\"\r\n]*)\"|([^\s;\"]+))"  # a boundary parameter
    rb"|content-type\s*:\s*(message)/"  # an attached message: one more level
)
_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_ANGLE_ADDR_RE = re.compile(r"<([^<>]*)>")
_MSG_ID_RE = re.compile(r"<[^<>]*>")
_CHARSET_RE = re.compile(r"(?<![\w-])charset\s*=\s*\"?([^\s\";]+)", re.I)
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_JUNK = bytes(sorted(set(range(256)) - set(_B64_ALPHABET)))
_B64_JUNK_KEEP_PAD = bytes(sorted(set(range(256)) - set(_B64_ALPHABET + b"=")))

# Authentication-Results (RFC 8601).
_AR_COMMENT_RE = re.compile(r"\([^()]*\)")
_AR_METHODS = frozenset({"spf", "dkim", "dmarc"})
_AR_EQUALS_RE = re.compile(r"\s*=\s*")

# Bare URLs in plain text: http(s)://, www., and scheme-less messenger/shortener links.
# Each pattern starts with a literal, which the regex engine finds with a fast substring
# search; they run over the lower-cased text (same offsets), so no IGNORECASE is needed
# (it disables that fast path: one case-insensitive alternation cost ~140 µs per 2 KB).
_URL_CHAR = r"[^\s<>\"'`\u200b]"
_URL_SCHEME_RE = re.compile(r"://" + _URL_CHAR + "+")
_URL_WWW_RE = re.compile(r"www\." + _URL_CHAR + "+")
_URL_SHORT_RE = re.compile(r"\.(?:me|gg|link|ly|gd|gy|dog|com)/" + _URL_CHAR + "*")
_URL_SHORT_HOSTS = frozenset(
    {
        "wa.me",
        "wa.link",
        "t.me",
        "telegram.me",
        "telegram.dog",
        "m.me",
        "signal.me",
        "line.me",
        "discord.gg",
        "discord.com",  # only /invite/ links
        "chat.whatsapp.com",
        "api.whatsapp.com",
        "bit.ly",
        "cutt.ly",
        "tinyurl.com",
        "rb.gy",
        "is.gd",
    }
)
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_URL_TRAILING = ".,;:!?*'\""

# HTML to text. Block-level tags get a form feed inserted before them in the source
# (a whitespace character the HTML parser keeps in place, even inside tables, and that
# real mail practically never contains); after extraction every run of form feeds
# becomes one line break. Table cells get a plain space. Inline tags get nothing, so
# ``D<span>is</span>cord`` reads "Discord".
# The alternation is written as a trie: the regex engine tries branches one by one at
# every "<", and this runs over every HTML body.
_BLOCK_TAG_TRIE = (
    r"a(?:rticle|ddress|side)|b(?:r|lockquote)|c(?:enter|aption)|d(?:iv|[ldt]|etails)"
    r"|f(?:ooter|orm|ieldset|igure|igcaption)|h(?:[1-6r]|eader)|l(?:i|egend)|main|nav|ol"
    r"|p(?:re)?|s(?:ection|ummary)|t(?:r|able)|ul"
)
_BLOCK_TAG_RE = re.compile(r"<(?=/?(?:" + _BLOCK_TAG_TRIE + r")[\s/>])", re.I)
_CELL_TAG_RE = re.compile(r"<(?=t[dh][\s/>])", re.I)
_DROPPED_TAGS = ["script", "style", "head", "title", "noscript", "template"]
_HIDDEN_CANDIDATES = (
    '[hidden], [style*="none" i], [style*="hidden" i], [style*="font-size" i],'
    ' [style*="opacity" i], [style*="height" i]'
)
_CSS_ZERO = r"(?:0+(?:\.0*)?|\.0+)(?:px|pt|em|rem|%)?\s*(?:!\s*important\s*)?(?:;|$)"
_DISPLAY_NONE_RE = re.compile(r"(?:^|[;\s])display\s*:\s*none", re.I)
_OPACITY_ZERO_RE = re.compile(r"(?:^|[;\s])opacity\s*:\s*" + _CSS_ZERO, re.I)
_FONT_SIZE_RE = re.compile(r"(?:^|[;\s])font-size\s*:\s*([^;]*)", re.I)
_FONT_SIZE_ZERO_RE = re.compile(r"(?:0+(?:\.0*)?|\.0+)(?:px|pt|em|rem|%)?\s*(?:!\s*important)?\s*$")
_FONT_SIZE_RELATIVE_RE = re.compile(r"[\d.]+\s*(?:em|%)|inherit|smaller|larger|calc|var", re.I)
_VISIBILITY_RE = re.compile(r"(?:^|[;\s])visibility\s*:\s*([a-z]+)", re.I)
_HIDES_ALL, _HIDES_INHERITED = 1, 2
# Cheap hints, searched in the lower-cased source (each starts with a literal, which the
# regex engine finds fast); only when one matches are the elements themselves checked.
_HIDDEN_HINT_RES = tuple(
    re.compile(pattern)
    for pattern in (
        r"display\s*:\s*none",
        r"visibility\s*:\s*hidden",
        r"hidden[\s=/>]",
        r"font-size\s*:\s*(?:0+(?:\.0*)?|\.0+)(?![\d.])",
        r"opacity\s*:\s*(?:0+(?:\.0*)?|\.0+)(?![\d.])",
        r"height\s*:\s*(?:0+(?:\.0*)?|\.0+)(?![\d.])",
    )
)
_ZERO_HEIGHT_RE = re.compile(r"(?:^|[;\s])(?:max-)?height\s*:\s*" + _CSS_ZERO, re.I)
_OVERFLOW_HIDDEN_RE = re.compile(r"overflow(?:-[xy])?\s*:\s*hidden", re.I)
_ZERO_WIDTH_RE = re.compile("[\u00ad\u180e\u200b-\u200d\u2060\ufeff]+")

# Charset labels that Python spells differently or that mail software uses loosely
# (a declared superset reads everything the subset would, and more).
_CHARSET_ALIASES = {
    "us-ascii": "utf-8",
    "ascii": "utf-8",
    "ansi_x3.4-1968": "utf-8",
    "utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "x-unicode20utf8": "utf-8",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "iso_8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "x-sjis": "cp932",
    "iso-8859-8-i": "iso-8859-8",
    "windows-874": "cp874",
    "tis-620": "cp874",
}

# Encryption markers of archives and documents.
_SEVENZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
_SEVENZIP_AES = b"\x06\xf1\x07\x01"  # coder id of 7zAES
_RAR4_MAGIC = b"Rar!\x1a\x07\x00"
_RAR5_MAGIC = b"Rar!\x1a\x07\x01\x00"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OLE_ENCRYPTED = "EncryptedPackage".encode("utf-16-le")  # password-protected Office file


# --------------------------------------------------------------------------------------
# Small helpers.


class _Defects:
    """Human-readable problem notes: one line each, short, unique, at most MAX_DEFECTS.

    ``unchecked`` collects the notes that mean part of the message went unread
    (:meth:`cut`); those become ``Message.unchecked``. ``deadline`` is the
    ``time.thread_time()`` after which no more parts are read (see :meth:`late`): CPU
    time of the parsing thread, so a busy machine does not make ordinary mail "unchecked".
    """

    __slots__ = ("_seen", "deadline", "items", "out_of_time", "qr_left", "unchecked")

    def __init__(self, deadline: float = float("inf")) -> None:
        self.items: list[str] = []
        self._seen: set[str] = set()
        self.unchecked: list[str] = []
        self.deadline = deadline
        self.out_of_time = False
        self.qr_left = QR_MAX_IMAGES  # images this message may still have searched for QR

    def cut(self, note: str) -> None:
        """A note that also marks the message as not read whole."""
        self.add(note)
        note = " ".join(note.split())[:_DEFECT_CHARS]
        if note not in self.unchecked and len(self.unchecked) < _MAX_UNCHECKED:
            self.unchecked.append(note)

    def late(self) -> bool:
        """True (and noted once) when the message's time budget is spent."""
        if self.out_of_time:
            return True
        if time.thread_time() <= self.deadline:
            return False
        self.out_of_time = True
        self.cut("reading took longer than the time budget; the rest was not read")
        return True

    def add(self, note: str) -> None:
        note = " ".join(note.split())
        if len(note) > _DEFECT_CHARS:
            note = note[: _DEFECT_CHARS - 1] + "…"
        if note and note not in self._seen and len(self.items) < MAX_DEFECTS:
            self._seen.add(note)
            self.items.append(note)


def _cap(text: str, what: str, defects: _Defects) -> str:
    """``text`` cut to MAX_TEXT_CHARS: its beginning and its end, the cut noted."""
    if len(text) > MAX_TEXT_CHARS:
        defects.cut(f"{what} truncated to {MAX_TEXT_CHARS} characters")
        return _head_tail(text, MAX_TEXT_CHARS)
    return text


_ELISION = "\n[…]\n"


def _head_tail(text: str, limit: int) -> str:
    """The first and last characters of ``text``, ``limit`` in all with the mark between."""
    if len(text) <= limit:
        return text
    if limit <= 2 * len(_ELISION):
        return text[:limit]
    keep = limit - len(_ELISION)
    head = keep - keep // 2
    return text[:head] + _ELISION + text[len(text) - keep // 2 :]


def _join_parts(parts: list[str], what: str, defects: _Defects) -> str:
    """The texts of the body parts, one per line, at most MAX_TEXT_CHARS in all.

    When they are longer, every part keeps its beginning and its end (the parts shorter
    than an equal share are kept whole, the rest shares what is left), so padding in one
    part or a thousand parts before the one that matters cannot push it out of reach.
    """
    total = sum(len(p) for p in parts) + max(0, len(parts) - 1)
    if total <= MAX_TEXT_CHARS:
        return "\n".join(parts)
    defects.cut(f"{what} truncated to {MAX_TEXT_CHARS} characters")
    budget = MAX_TEXT_CHARS - max(0, len(parts) - 1)
    if budget < len(parts) * 4 * len(_ELISION):  # absurdly many parts: first and last
        return _head_tail("\n".join(parts), MAX_TEXT_CHARS)
    lengths = sorted(len(p) for p in parts)
    share, left, count = budget, budget, len(parts)
    for length in lengths:  # water-filling: short parts whole, long ones an equal share
        share = left // count
        if length > share:
            break
        left -= length
        count -= 1
    text = "\n".join(_head_tail(p, share) for p in parts)
    return text[:MAX_TEXT_CHARS]


def _valid_unicode(text: str) -> str:
    """Replace lone surrogates (some codecs produce them) so the text encodes as UTF-8."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _fix_raw_text(text: str) -> str:
    """Turn surrogate-escaped 8-bit bytes (raw header octets) into real characters.

    The bytes are read as UTF-8 when they are valid UTF-8, else as windows-1252.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _header_str(value: Any) -> str:
    """A raw header value unfolded, with NULs removed, 8-bit bytes decoded, stripped."""
    if not value:
        return ""
    if not isinstance(value, str):
        value = str(value)
    if "\n" in value:
        value = value.replace("\n", "")
    if "\r" in value:
        value = value.replace("\r", "")
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not value.isascii():
        value = _fix_raw_text(value)
    return value.strip()


@lru_cache(maxsize=256)
def _codec(charset: str) -> str | None:
    """The Python codec for a MIME charset label, or None when unknown or not text."""
    name = charset.strip().strip("\"'").lower()
    if not name or len(name) > 40:
        return None
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True):  # base64, zlib, rot13...
        return None
    return info.name


def _decode_bytes(data: bytes, charset: str | None) -> tuple[str, str]:
    """Decode ``data`` as ``charset``; returns the text and a problem note ("" if none).

    Order: the declared charset, then UTF-8; bytes that are no UTF-8 either are read
    as UTF-8 with replacement characters when the payload holds some valid multi-byte
    UTF-8, otherwise as windows-1252 (the latin-1 superset legacy mail really uses),
    so a mislabelled Western text keeps its letters instead of turning into U+FFFD.
    """
    problem = ""
    codec = _codec(charset) if charset else "utf-8"
    if codec is None:
        problem = f"unknown charset {charset!r}"
    else:
        try:
            return _valid_unicode(data.decode(codec)), ""
        except Exception:  # UnicodeError, or anything an exotic codec raises
            if codec == "cp1252":  # the 5 bytes windows-1252 lacks: read as latin-1
                return data.decode("latin-1"), ""
            problem = f"bytes are not valid {charset or 'utf-8'}"
    if codec != "utf-8":
        try:
            return data.decode("utf-8"), f"{problem}, decoded as utf-8"
        except UnicodeDecodeError:
            pass
    text = data.decode("utf-8", "replace")
    if text.replace("\ufffd", "").isascii() and not data.isascii():
        return data.decode("cp1252", "replace"), f"{problem}, decoded as windows-1252"
    return text, f"{problem}, decoded as utf-8 with replacement characters"


def _b64decode(data: bytes) -> bytes:
    """Lenient base64: junk characters ignored, bad padding repaired, never raises."""
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        clean = data.translate(None, _B64_JUNK)
        if len(clean) % 4 == 1:
            clean = clean[:-1]
        try:
            return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
        except (binascii.Error, ValueError):
            return b""


def _decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words anywhere in ``text``; never raises.

    Adjacent encoded words in one charset are joined before decoding, so a multi-byte
    character split across two words survives; whitespace between encoded words is
    dropped as the RFC says. Unknown charsets are read as UTF-8 with replacement.
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    pending: list[bytes] = []  # joined once per run: linear however many words
    pending_charset: str | None = None
    pos = 0
    for match in _ENCODED_WORD_RE.finditer(text):
        gap = text[pos : match.start()]
        charset = match.group(1).split("*", 1)[0]
        if pending_charset is not None and (
            (gap and not gap.isspace()) or charset != pending_charset
        ):
            out.append(_decode_bytes(b"".join(pending), pending_charset)[0])
            pending, pending_charset = [], None
        if pending_charset is None:
            out.append(gap)
        try:
            word = match.group(3).encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            word = match.group(3).encode("utf-8", "replace")
        if match.group(2) in "bB":
            pending.append(_b64decode(word))
        else:
            pending.append(binascii.a2b_qp(word, header=True))
        pending_charset = charset
        pos = match.end()
    if pending_charset is not None:
        out.append(_decode_bytes(b"".join(pending), pending_charset)[0])
    out.append(text[pos:])
    return "".join(out)


def _header_text(value: Any) -> str:
    """A display header (Subject, a display name): decoded and whitespace-collapsed."""
    return " ".join(_decode_words(_header_str(value)).split())


def _normalise_text(text: str) -> str:
    """LF line ends, no NUL characters, Unicode NFC (composed accents, as mail-parser does)."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = _NEWLINES_RE.sub("\n", text)
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text


# --------------------------------------------------------------------------------------
# Headers.


def _first_headers(part: MimePart) -> dict[str, str]:
    """First occurrence of each wanted header, raw (as on the wire, still folded)."""
    found: dict[str, str] = {}
    for name, value in part.raw_items():
        key = name.lower()
        if key in _WANTED_HEADERS and key not in found:
            found[key] = value
    return found


def _to_addresses(pairs: Any) -> tuple[Address, ...]:
    """(display name, address) pairs, as mail-parser or email.utils give them, to Addresses."""
    if not pairs or not isinstance(pairs, list):
        return ()
    out: list[Address] = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            continue
        name, addr = pair
        if not isinstance(addr, str) or not isinstance(name, str):
            continue
        if not addr.isascii() or "\x00" in addr or "\n" in addr:
            addr = _header_str(addr)
        addr = addr.strip().lower()
        if not addr:
            continue
        if name:
            if not name.isascii() or "\x00" in name:
                name = _header_str(name)
            name = " ".join(name.split())
            if name.lower() == addr:
                name = ""
        out.append(Address(name, addr))
    return tuple(out)


def _parse_addresses(raw: str) -> tuple[Address, ...]:
    """Own mailbox parsing, for Sender and when mail-parser found nothing usable."""
    try:
        pairs = email.utils.getaddresses([_header_str(raw)])
    except Exception:
        return ()
    return _to_addresses([(_decode_words(name), addr) for name, addr in pairs if "@" in addr])


def _address_header(
    parsed: Any, raw: str | None, defects: _Defects, label: str
) -> tuple[Address, ...]:
    """mail-parser's mailboxes; our own reading when it rejected a present header or the
    header carries raw 8-bit bytes (mail-parser leaves those as backslash escapes)."""
    if isinstance(raw, str) and not raw.isascii():
        found = _parse_addresses(raw)
        if found:
            return found
    found = _to_addresses(parsed)
    if found or raw is None or not _header_str(raw):
        return found
    found = _parse_addresses(raw)
    if found:
        defects.add(f"{label} header is malformed; read leniently")
    return found


def _return_path(raw: str | None) -> str:
    if raw is None:
        return ""
    value = _header_str(raw)
    match = _ANGLE_ADDR_RE.search(value)
    if match:
        value = match.group(1)
    return value.strip().strip("<>").strip().lower()


def _message_date(parsed: Any, raw: str, defects: _Defects) -> datetime | None:
    """Date header as an aware datetime in the sender's own UTC offset, or None."""
    value = _header_str(raw)
    date = parsed if isinstance(parsed, datetime) else None
    if date is None:  # mail-parser is strict; the stdlib reads a few more forms
        try:
            date = email.utils.parsedate_to_datetime(value)
        except Exception:
            date = None
        if date is None:
            defects.add(f"date header could not be parsed: {value[:80]!r}")
            return None
    if date.tzinfo is None:
        date = date.replace(tzinfo=UTC)
    if value.endswith(")"):  # "... -0500 (EST)"
        value = value[: value.rfind("(")].rstrip()
    zone = _zone(value[-5:])
    if zone is not None:
        with contextlib.suppress(OverflowError, ValueError):
            date = date.astimezone(zone)
    return date


@lru_cache(maxsize=64)
def _zone(token: str) -> timezone | None:
    """The UTC offset written as "+hhmm"/"-hhmm", or None when ``token`` is not one."""
    if (
        len(token) != 5
        or token[0] not in "+-"
        or not token[1:].isascii()
        or not token[1:].isdigit()
    ):
        return None
    hours, minutes = int(token[1:3]), int(token[3:])
    if hours > 23 or minutes > 59:
        return None
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if token[0] == "-" else offset)


def _auth_results(raw: str | None) -> AuthResults:
    """Verdicts of one Authentication-Results header (RFC 8601), comments removed.

    Mostly plain string work (this runs for every message). Results are read as
    ``method=verdict`` tokens, so a header that forgets the ";" between results is
    read too; ``header.d`` (else the domain of ``header.i``) is taken from the
    properties following a dkim result.
    """
    if raw is None:
        return AuthResults()
    value = _header_str(raw).lower()
    if "(" in value:
        for _ in range(8):  # nested comments, innermost first; bounded
            stripped = _AR_COMMENT_RE.sub(" ", value)
            if stripped == value:
                break
            value = stripped
    if " =" in value or "= " in value:
        value = _AR_EQUALS_RE.sub("=", value)
    verdicts: dict[str, str] = {}
    dkim: list[list[str]] = []  # [verdict, domain]
    current: list[str] | None = None
    for segment in value.split(";"):
        current = None
        for token in segment.split():
            key, equals, val = token.partition("=")
            if not equals:
                continue
            if key in _AR_METHODS:
                verdict = val.strip('"')
                verdicts.setdefault(key, verdict)
                current = [verdict, ""] if key == "dkim" else None
                if current is not None:
                    dkim.append(current)
            elif current is not None and key == "header.d":
                current[1] = val.strip('"').rstrip(".")
            elif current is not None and key == "header.i" and not current[1]:
                current[1] = val.strip('"').rpartition("@")[2].rstrip(".")
    dkim_verdict = "pass" if any(v == "pass" for v, _ in dkim) else verdicts.get("dkim", "")
    domains = tuple(dict.fromkeys(d for v, d in dkim if v == "pass" and d))
    return AuthResults(
        spf=verdicts.get("spf", ""),
        dkim=dkim_verdict,
        dmarc=verdicts.get("dmarc", ""),
        dkim_domains=domains,
    )


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


# --------------------------------------------------------------------------------------
# Limits applied to the raw bytes before the MIME parser sees them.


def _header_end(data: bytes) -> int:
    """Offset of the blank line that ends the header block (len(data) when none)."""
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n", 0, crlf if crlf >= 0 else len(data))
    end = lf if lf >= 0 else crlf
    return end + 1 if end >= 0 else len(data)


def _cap_headers(data: bytes, defects: _Defects) -> bytes:
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


def _limit_mime_depth(data: bytes, defects: _Defects) -> bytes:
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


def _mime_parse(data: bytes, defects: _Defects) -> MimePart:
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


class _Mail:
    """What ``parse_message`` takes from mail-parser: the MIME tree, the address headers
    and Date as mail-parser reads them, its defect notes, and (only after a recovery, see
    :func:`_read_mail`) the body texts it decoded."""

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
_RECOVERED_DEFECTS = frozenset({"StartBoundaryNotFoundDefect"})


def _read_mail(data: bytes, defects: _Defects | None = None) -> _Mail:
    """Parse ``data`` with mail-parser's pieces, skipping the work whose results the guard
    never reads.

    ``mailparser.parse_from_bytes`` is ``email.message_from_bytes`` followed by
    ``MailParser.parse``, which on top of what is used here parses every Received header
    (a quarter to a third of its time on the public corpora), decodes every header into
    ``MailParser.mail`` and again into ``mail_partial``, copies each attachment into a
    base64 string and decodes every text part (``_Reader`` decodes them anyway). This does
    the stdlib parse, reads From/To/Cc/Reply-To with mail-parser's address parser and
    Date with its date parser (same calls, same options, same defect records), and
    collects the stdlib's MIME defects in mail-parser's wording. Body parts are decoded
    by ``_Reader``. mail-parser's notes on headers the guard does not read (Received,
    Delivered-To, Bcc, Resent-Date) and on undecodable MIME header bytes are not made.

    Only for a multipart whose start boundary never came does the full
    ``mailparser.parse_from_bytes`` run, for the parts it recovers from the epilogue.
    """
    try:
        message = _mime_parse(data, defects or _Defects())
        mail = _Mail(message)
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
    if mail.categories & _RECOVERED_DEFECTS:
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


def _read_mail_fully(data: bytes) -> _Mail:
    """``mailparser.parse_from_bytes``, all of it, as a :class:`_Mail`."""
    parsed = mailparser.parse_from_bytes(data)
    mail = _Mail(parsed.message)
    fields = parsed.mail
    mail.addresses = {key: fields.get(key) or [] for key in _ADDRESS_HEADERS}
    mail.date = parsed.date
    mail.notes = _mailparser_notes(parsed)
    mail.categories = set(parsed.defects_categories)
    mail.text_plain = list(parsed.text_plain)
    mail.text_html = list(parsed.text_html)
    return mail


# --------------------------------------------------------------------------------------
# Links and HTML.


def _url_links(text: str, links: list[Link]) -> None:
    """Append the bare URLs of a plain-text body to ``links``, in text order."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters grow when lower-cased (U+0130)
        lowered = text.translate(_ASCII_LOWER)
    found: list[tuple[int, int]] = []
    for match in _URL_SCHEME_RE.finditer(lowered):
        start = match.start()
        if lowered.endswith("https", 0, start):
            start -= 5
        elif lowered.endswith("http", 0, start):
            start -= 4
        else:
            continue
        if start == 0 or not lowered[start - 1].isalnum():
            found.append((start, match.end()))
    if "www." in lowered:
        for match in _URL_WWW_RE.finditer(lowered):
            start = match.start()
            if start == 0 or not (lowered[start - 1].isalnum() or lowered[start - 1] in "/.@"):
                found.append((start, match.end()))
    for match in _URL_SHORT_RE.finditer(lowered):
        start = match.start()
        while start > 0 and lowered[start - 1] in _HOST_CHARS:
            start -= 1
        host = lowered[start : lowered.index("/", match.start())]
        if host not in _URL_SHORT_HOSTS or (start > 0 and lowered[start - 1] in "/@"):
            continue
        if host.endswith("discord.com") and not lowered.startswith("/invite/", match.start() + 4):
            continue
        found.append((start, match.end()))
    if len(found) > 1:
        found.sort()
    for start, end in found:
        if len(links) >= MAX_LINKS:
            return
        url = text[start:end].rstrip(_URL_TRAILING)
        for close, open_ in ((")", "("), ("]", "["), ("}", "{")):
            while url.endswith(close) and url.count(close) > url.count(open_):
                url = url[:-1].rstrip(_URL_TRAILING)
        if len(url) > 4:
            links.append(Link(url, url))


_SCRIPT_SCHEME_RE = re.compile(r"[\x00-\x20]*(?:javascript|vbscript|data)[\t\n\r]*:", re.I)


def _bounded_href(href: str) -> str:
    """``href`` cut to MAX_HREF_CHARS, a ``data:``/``javascript:`` one to SCRIPT_HREF_CHARS."""
    if len(href) > SCRIPT_HREF_CHARS and _SCRIPT_SCHEME_RE.match(href[:64]):
        return href[:SCRIPT_HREF_CHARS]
    return href[:MAX_HREF_CHARS]


def _visible(text: str) -> str:
    """Collapse whitespace and drop zero-width characters (``Pay&#8203;Pal``)."""
    if not text.isascii():
        text = _ZERO_WIDTH_RE.sub("", text)
    return " ".join(text.split())


def _may_hide(lowered: str) -> bool:
    """Whether the lower-cased HTML source contains any hiding construct at all."""
    display, visibility, attribute, font_size, opacity, height = _HIDDEN_HINT_RES
    return bool(
        display.search(lowered)
        or visibility.search(lowered)
        or attribute.search(lowered)
        or font_size.search(lowered)
        or opacity.search(lowered)
        or height.search(lowered)
    )


def _font_size_zero(style: str) -> bool | None:
    """True for a zero font-size, False for one that shows text again, None: inherited."""
    match = _FONT_SIZE_RE.search(style)
    if match is None:
        return None
    value = match.group(1).strip()
    if _FONT_SIZE_ZERO_RE.match(value):
        return True
    if _FONT_SIZE_RELATIVE_RE.match(value):  # relative to a zero size is still zero
        return None
    return False


def _css_visible(style: str) -> bool | None:
    """The ``visibility`` an element declares (False: hidden/collapse), None: inherited."""
    match = _VISIBILITY_RE.search(style)
    if match is None:
        return None
    return match.group(1).lower() not in ("hidden", "collapse")


def _hiding(attrs: dict[str, str | None]) -> int:
    """How an element hides its content.

    ``_HIDES_ALL``: nothing inside can show (``hidden`` attribute, display:none, opacity 0,
    zero height with overflow hidden). ``_HIDES_INHERITED``: font-size 0 or visibility
    hidden, which a descendant can undo (e-mail layouts put font-size:0 on table cells
    and give the text inside its own size). 0: not hidden.
    """
    if "hidden" in attrs:
        return _HIDES_ALL
    style = attrs.get("style")
    if not style:
        return 0
    if (
        _DISPLAY_NONE_RE.search(style)
        or _OPACITY_ZERO_RE.search(style)
        or (_ZERO_HEIGHT_RE.search(style) and _OVERFLOW_HIDDEN_RE.search(style))
    ):
        return _HIDES_ALL
    if _font_size_zero(style) or _css_visible(style) is False:
        return _HIDES_INHERITED
    return 0


def _visible_chars(text: str) -> int:
    return len("".join(text.split()))


def _remove_inherited(node: Any) -> int:
    """Remove the text of ``node`` that inherits its zero font-size / hidden visibility;
    returns how many non-space characters went."""
    total = _visible_chars(node.text())
    if not total:
        return 0
    source = node.html.lower()
    if source.count("font-size") <= 1 and "visible" not in source:
        _drop(node)  # nothing inside shows itself again: the whole element goes
        return total
    style = node.attrs.get("style") or ""
    font_zero, visible = bool(_font_size_zero(style)), _css_visible(style)
    stack = [(child, font_zero, visible) for child in node.iter(include_text=True)]
    removed = 0
    doomed = []
    while stack:
        child, zero, visible = stack.pop()
        if child.is_text_node:
            if zero or visible is False:
                count = _visible_chars(child.text(deep=False))
                if count:
                    removed += count
                    doomed.append(child)
        elif child.is_element_node:
            child_style = child.attrs.get("style") or ""
            if child_style:
                own_zero = _font_size_zero(child_style)
                own_visible = _css_visible(child_style)
                zero = zero if own_zero is None else own_zero
                visible = visible if own_visible is None else own_visible
            stack.extend(
                (grandchild, zero, visible) for grandchild in child.iter(include_text=True)
            )
    for text_node in doomed:
        text_node.decompose()
    return removed


def _drop(node: Any) -> None:
    """Remove ``node`` from its tree; the root element cannot go, so its content does."""
    if node.tag == "html":
        for child in list(node.iter(include_text=True)):
            child.decompose()
    else:
        node.decompose()


def _remove_hidden(tree: Any, defects: _Defects) -> None:
    """Remove hidden elements (inline styles and the ``hidden`` attribute) from ``tree``;
    note how much non-space text they held. ``aria-hidden`` alone is not hiding."""
    found = []
    for node in tree.css(_HIDDEN_CANDIDATES):
        kind = _hiding(node.attributes)
        if kind:
            found.append((node, kind))
    if not found:
        return
    hide_all = {node.mem_id for node, kind in found if kind == _HIDES_ALL}
    hide_any = {node.mem_id for node, _ in found}
    whole: list[Any] = []
    inherited: list[Any] = []
    for node, kind in found:
        parent = node.parent
        while parent is not None:
            # Inside an element that goes anyway, or (for the inherited kinds) inside one
            # whose walk will see it: nothing to do for this one.
            if parent.mem_id in hide_all or (kind != _HIDES_ALL and parent.mem_id in hide_any):
                break
            parent = parent.parent
        else:
            (whole if kind == _HIDES_ALL else inherited).append(node)
    del found  # let go of nested nodes before their ancestors are destroyed
    removed = 0
    for node in whole:
        removed += _visible_chars(node.text())
        _drop(node)
    for node in inherited:
        removed += _remove_inherited(node)
    if removed:
        defects.add(f"html: hidden text removed ({removed} chars)")


def _html_to_text(html: str, links: list[Link] | None, defects: _Defects) -> str:
    """Visible text of an HTML document; appends its ``<a href>`` links to ``links``.

    A document over the size limit is read as two: its beginning and its end (so a
    megabyte of comment or padding cannot hide what follows it), the cut noted.
    """
    if len(html) > _MAX_HTML_CHARS:
        defects.cut(f"html: only the first and last {_MAX_HTML_CHARS // 2} characters were read")
        half = _MAX_HTML_CHARS // 2
        head = _html_doc_text(html[:half], links, defects)
        tail = html[len(html) - half :]
        del html
        return head + "\n" + _html_doc_text(tail, links, defects)
    return _html_doc_text(html, links, defects)


# Void elements (never pushed on the HTML parser's stack of open elements), and those
# an opening sibling closes implicitly (so sloppy but ordinary HTML is not counted deep).
_VOID_TAGS = frozenset(
    [
        "area",
        "base",
        "basefont",
        "bgsound",
        "br",
        "col",
        "embed",
        "frame",
        "hr",
        "image",
        "img",
        "input",
        "keygen",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    ]
)
_IMPLIED_END_TAGS = frozenset(
    [
        "p",
        "li",
        "dd",
        "dt",
        "option",
        "optgroup",
        "rb",
        "rp",
        "rt",
        "rtc",
        "td",
        "th",
        "tr",
        "tbody",
        "thead",
        "tfoot",
        "caption",
        "colgroup",
    ]
)
_RAW_TEXT_TAGS = frozenset(
    ["script", "style", "xmp", "iframe", "noembed", "noframes", "textarea", "title"]
)
_HTML_FAST_TAGS = 4000  # with fewer "<" than this, nesting cannot cost much: no pre-pass
_HTML_TOKEN_RE = re.compile(
    r"<!--(?:-?>|.*?(?:--!?>|\Z))"  # a comment, the abrupt "<!-->" forms too
    r"|<[!?][^>]*>?"  # doctype, bogus comment
    r"|<(/?)([A-Za-z][^\t\n\f\r />]*)"  # a tag: end slash, name
    r"(?:[^>\"'=]+|[\"']|=[\t\n\f\r ]*\"[^\"]*\"?|=[\t\n\f\r ]*'[^']*'?|=)*>?",
    re.S,
)
_BLOCK_NAMES = re.compile(r"(?:" + _BLOCK_TAG_TRIE + r")\Z", re.I)


def _limit_html(html: str, defects: _Defects) -> tuple[str, str]:
    """``html`` with its nesting bounded, and the text of what lies past the tag limit.

    The HTML parser's tree building costs time in proportion to the depth of the open
    elements for each start tag (120,000 nested ``<div>`` took 36 s). A linear pass
    estimates that depth (an end tag closes only the element on top, or the implied ends
    above it, so mismatched end tags cannot hide depth) and drops the start and end tags
    of elements deeper than MAX_HTML_DEPTH (block tags leave a line break); past
    MAX_HTML_TAGS start tags the rest of the document is returned separately as text
    with its tags removed. Returns ``(html, rest_text)``.
    """
    if html.count("<") < _HTML_FAST_TAGS:
        return html, ""
    stack: list[str] = []
    excess: list[str] = []
    out: list[str] = []
    pos = 0
    tags = 0
    deep = False
    rest = ""
    search = _HTML_TOKEN_RE.search
    match = search(html)
    while match is not None:
        name = match.group(2)
        if name is None:
            match = search(html, match.end())
            continue
        name = name.lower()
        drop = False
        if match.group(1):  # an end tag
            if stack and stack[-1] == name:
                stack.pop()
            elif excess and excess[-1] == name:
                excess.pop()
                drop = True
            elif name in stack[-4:]:
                while stack and stack[-1] != name and stack[-1] in _IMPLIED_END_TAGS:
                    stack.pop()
                if stack and stack[-1] == name:
                    stack.pop()
        else:
            tags += 1
            if tags > MAX_HTML_TAGS:
                defects.cut(f"html: more than {MAX_HTML_TAGS} tags; the rest read without markup")
                rest = _HTML_TOKEN_RE.sub(" ", html[match.start() :])
                html = html[: match.start()]
                break
            if name not in _VOID_TAGS:
                if stack and stack[-1] == name and name in _IMPLIED_END_TAGS:
                    stack.pop()
                if len(stack) >= MAX_HTML_DEPTH:
                    excess.append(name)
                    drop = deep = True
                else:
                    stack.append(name)
                    if name in _RAW_TEXT_TAGS:  # its content is text up to its end tag
                        close = re.compile(r"</" + re.escape(name) + r"[\t\n\f\r />]", re.I)
                        found = close.search(html, match.end())
                        if found is None:
                            break
                        match = search(html, found.start())
                        continue
        if drop:
            out.append(html[pos : match.start()])
            out.append("\f" if _BLOCK_NAMES.match(name) else "")
            pos = match.end()
        match = search(html, match.end())
    if deep:
        defects.cut(f"html: nested deeper than {MAX_HTML_DEPTH} elements; deeper markup ignored")
    if out:
        out.append(html[pos:])
        html = "".join(out)
    return html, rest


def _html_doc_text(html: str, links: list[Link] | None, defects: _Defects) -> str:
    """:func:`_html_to_text` for a document within the size limit."""
    if "\f" in html:
        html = html.replace("\f", " ")
    html, rest = _limit_html(html, defects)
    html = _CELL_TAG_RE.sub(" <", _BLOCK_TAG_RE.sub("\f<", html))
    lowered = html.lower()
    tree = LexborHTMLParser(html)
    dropped = [tag for tag in _DROPPED_TAGS if "<" + tag in lowered]
    if dropped:
        tree.strip_tags(dropped, recursive=True)

    if links is not None:
        # tags("a") rather than css("a[href]"): the CSS engine costs ~20 µs per call here.
        for anchor in tree.tags("a"):
            href = anchor.attrs.get("href")
            if href is None:
                continue
            if len(links) >= MAX_LINKS:
                break
            if "\f" in href:
                href = href.replace("\f", "")
            href = _bounded_href(href)
            label = _visible(anchor.text())
            if not label:
                image = anchor.css_first("img[alt]")
                if image is not None:
                    label = _visible(image.attrs.get("alt") or "")
            links.append(Link(label, href.strip()))

    if _may_hide(lowered):
        try:
            _remove_hidden(tree, defects)
        except Exception as exc:  # keep the text rather than lose the part
            defects.add(f"html: hidden-text check failed: {type(exc).__name__}: {exc}")

    root = tree.body or tree.root
    text = root.text() if root is not None else ""
    if not text.isascii():
        text = _ZERO_WIDTH_RE.sub("", text)
    if rest:
        text += "\f" + html_lib.unescape(rest)
    # Form feeds are the block boundaries; all other whitespace collapses to a space.
    return "\n".join(filter(None, [" ".join(line.split()) for line in text.split("\f")]))


# --------------------------------------------------------------------------------------
# Attachments.


def _sniff(head: bytes) -> str:
    if not head:
        return ""
    try:
        kind = filetype.guess(head[:_SNIFF_BYTES])
    except Exception:
        kind = None
    if kind is not None:
        return str(kind.mime)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "application/zip"
    return ""


def _zip_flag_set(data: bytes, signature: bytes, flag_offset: int) -> bool:
    """True when a zip header record carries general-purpose flag bit 0 (encrypted)."""
    pos = data.find(signature)
    for _ in range(4096):
        if pos == -1:
            return False
        if pos + flag_offset < len(data) and data[pos + flag_offset] & 0x1:
            return True
        pos = data.find(signature, pos + 4)
    return False


def _vint(data: bytes, pos: int) -> tuple[int, int]:
    """A RAR5 variable-length integer at ``pos``: (value, position after it)."""
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated vint")


def _rar_encrypted(data: bytes) -> bool:
    """Encrypted-header or encrypted-file flags in the first headers of a RAR archive."""
    try:
        if data.startswith(_RAR5_MAGIC):
            pos = len(_RAR5_MAGIC)
            for _ in range(32):
                size, start = _vint(data, pos + 4)  # after the header CRC32
                end = start + size
                kind, p = _vint(data, start)
                if kind == 4:  # archive encryption header
                    return True
                flags, p = _vint(data, p)
                extra = payload = 0
                if flags & 0x1:
                    extra, p = _vint(data, p)
                if flags & 0x2:
                    payload, p = _vint(data, p)
                if kind == 2 and extra:  # file header: look for an encryption record
                    q = end - extra
                    while q < end:
                        record, q2 = _vint(data, q)
                        record_type, _ = _vint(data, q2)
                        if record_type == 1:
                            return True
                        q = q2 + max(record, 1)
                if kind == 5 or end >= len(data):  # end of archive
                    return False
                pos = end + payload
            return False
        pos = len(_RAR4_MAGIC)
        for _ in range(32):
            if pos + 7 > len(data):
                return False
            kind, flags = data[pos + 2], int.from_bytes(data[pos + 3 : pos + 5], "little")
            size = int.from_bytes(data[pos + 5 : pos + 7], "little")
            if kind == 0x73 and flags & 0x80:  # archive headers encrypted
                return True
            if kind == 0x74 and flags & 0x04:  # file encrypted
                return True
            if size < 7:
                return False
            added = 0
            if kind == 0x74 or flags & 0x8000:
                added = int.from_bytes(data[pos + 7 : pos + 11], "little")
            pos += size + added
    except (ValueError, IndexError):
        return False
    return False


def _encrypted(head: bytes, tail: bytes) -> bool:
    """Password protection visible without extracting anything (head/tail of the file)."""
    if head.startswith(b"PK"):
        return _zip_flag_set(head, b"PK\x03\x04", 6) or _zip_flag_set(tail, b"PK\x01\x02", 8)
    if head.startswith(b"%PDF") or b"%PDF-" in head[:1024]:
        return b"/Encrypt" in head or (tail is not head and b"/Encrypt" in tail)
    if head.startswith(_SEVENZIP_MAGIC):
        return _SEVENZIP_AES in tail or (tail is not head and _SEVENZIP_AES in head)
    if head.startswith(b"Rar!\x1a\x07"):
        return _rar_encrypted(head)
    if head.startswith(_OLE_MAGIC):
        return _OLE_ENCRYPTED in head or (tail is not head and _OLE_ENCRYPTED in tail)
    return False


def _payload(part: MimePart, cte: str) -> tuple[int, bytes, bytes, bytes | None]:
    """(decoded size, head bytes, tail bytes, all bytes or None when not decoded whole).

    Big base64 payloads are not decoded whole: the size comes from the base64 length,
    and only the head (magic numbers, zip local headers) and the tail (zip central
    directory, PDF trailer, 7z header) are decoded.
    """
    raw = part.get_payload() if cte == "base64" else None
    if isinstance(raw, str) and len(raw) > _FULL_DECODE_CHARS:
        peek = _PEEK_BYTES * 4 // 3 + 4096
        head = _b64decode(raw[:peek].encode("ascii", "ignore").translate(None, _B64_JUNK))
        tail_chars = raw[-peek:].encode("ascii", "ignore").translate(None, _B64_JUNK_KEEP_PAD)
        tail = _b64decode(tail_chars[len(tail_chars) % 4 :])
        end = raw[-64:].rstrip()
        padding = min(2, len(end) - len(end.rstrip("=")))
        chars = len(raw) - raw.count("\n") - raw.count("\r") - raw.count(" ")
        size = max(0, (chars - padding) * 3 // 4)
        return size, head, tail, None
    if isinstance(raw, str):
        data = _b64decode(raw.encode("ascii", "ignore"))
    else:
        decoded = part.get_payload(decode=True)
        data = decoded if isinstance(decoded, bytes) else b""
    return len(data), data, data, data


# Attached web pages: what the raw markup holds, searched in the lower-cased bytes (each
# pattern starts with a literal or has only bounded repeats: linear time). "3d" allows for
# quoted-printable markup inside .mht archives ("type=3D"password"").
_WEB_PAGE_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "application/x-mimearchive"}
)
_WEB_PAGE_EXTS = frozenset({"htm", "html", "shtml", "xhtml", "xht", "svg", "mht", "mhtml"})
_HTML_TRAIT_RES = (
    ("form", re.compile(rb"<form[\s>/]")),
    ("password", re.compile(rb"type\s*=\s*(?:3d)?\\?[\"']?\s*password")),
    ("script", re.compile(rb"<script[\s>/]|onload\s*=|onerror\s*=")),
    ("refresh", re.compile(rb"http-equiv\s*=\s*(?:3d)?\\?[\"']?\s*refresh")),
    ("location", re.compile(rb"location(?:\.href)?\s*=(?!=)|location\.(?:replace|assign)\s*\(")),
    (
        "obfuscated",
        re.compile(
            rb"(?<![a-z0-9_$])(?:atob|unescape|eval|fromcharcode)\s*\("
            rb"|document\.write(?:ln)?\s*\(\s*(?:unescape|atob|decodeuricomponent)"
        ),
    ),
)


def _is_web_page(ctype: str, ext: str, head: bytes) -> bool:
    if ctype in _WEB_PAGE_TYPES or ext in _WEB_PAGE_EXTS:
        return True
    start = head[:512].lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return True
    return start.startswith((b"<svg", b"<?xml")) and b"<svg" in head[:4096].lower()


def _html_traits(head: bytes, tail: bytes, data: bytes | None) -> tuple[str, ...]:
    """What an attached page's raw markup holds (see ``Attachment.html_traits``)."""
    if data is not None:
        if len(data) <= 2 * HTML_SCAN_BYTES:
            blob = data.lower()
        else:
            blob = data[:HTML_SCAN_BYTES].lower() + b"\n" + data[-HTML_SCAN_BYTES:].lower()
    else:
        blob = head[:HTML_SCAN_BYTES].lower() + b"\n" + tail[-HTML_SCAN_BYTES:].lower()
    found = {name for name, pattern in _HTML_TRAIT_RES if pattern.search(blob)}
    traits: list[str] = [t for t in ("form", "password", "script") if t in found]
    if "refresh" in found or ("script" in found and "location" in found):
        traits.append("redirect")
    if "script" in found and "obfuscated" in found:
        traits.append("obfuscated")
    return tuple(traits)


# QR codes in images. Pillow and zxing-cpp are imported on the first image only.
_QR_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp"})
_QR_PILLOW_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
_WEB_URL_RE = re.compile(r"(?:https?://|www\.)[^\s<>\"]+", re.I)
_qr_reader: Any = None  # (PIL.Image, zxingcpp) once imported; False when unavailable


def _qr_modules() -> Any:
    global _qr_reader
    if _qr_reader is None:
        try:
            import warnings

            import zxingcpp
            from PIL import Image

            # Explicit decompression-bomb limit: Pillow raises DecompressionBombError past
            # twice this and only warns between; images over QR_MAX_PIXELS are skipped
            # before decoding anyway, so the warning is silenced.
            Image.MAX_IMAGE_PIXELS = QR_MAX_PIXELS
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
            _qr_reader = (Image, zxingcpp)
        except Exception:
            _qr_reader = False
    return _qr_reader


def _qr_codes(data: bytes, filename: str, defects: _Defects) -> tuple[str, ...]:
    """The texts of the QR codes in one image; () for anything that is not one.

    Bounded: at most QR_MAX_IMAGES images per message, QR_MAX_IMAGE_BYTES bytes and
    QR_MAX_PIXELS pixels each (checked from the header, before decoding). Any error of
    Pillow or the decoder means "no QR code": a broken image never fails the message.
    """
    if len(data) > QR_MAX_IMAGE_BYTES:
        return ()
    modules = _qr_modules()
    if not modules:
        return ()
    image_mod, zxing = modules
    try:
        with image_mod.open(io.BytesIO(data), formats=_QR_PILLOW_FORMATS) as image:
            width, height = image.size
            if width * height > QR_MAX_PIXELS:
                defects.add(f"image {filename!r}: too large to search for a QR code")
                return ()
            if min(width, height) < QR_MIN_SIDE:
                return ()
            if defects.qr_left <= 0:
                defects.add(f"more than {QR_MAX_IMAGES} images; the rest not searched for QR codes")
                return ()
            defects.qr_left -= 1
            if image.format == "JPEG":
                image.draft("L", (width, height))
            gray = image.convert("L")
        found = zxing.read_barcodes(gray, formats=zxing.BarcodeFormat.QRCode, try_rotate=False)
    except image_mod.DecompressionBombError:
        defects.add(f"image {filename!r}: too large to search for a QR code")
        return ()
    except Exception:  # not an image, truncated, a decoder error: no QR code
        return ()
    texts: list[str] = []
    for code in found[:QR_MAX_CODES]:
        text = str(getattr(code, "text", "") or "").strip()
        if text and text not in texts:
            texts.append(_valid_unicode(text[:QR_TEXT_CHARS]))
    return tuple(texts)


def _qr_links(codes: tuple[str, ...], filename: str) -> list[Link]:
    """The web addresses among QR code texts, as links the reader would follow."""
    label = f"QR code in {filename or 'an image'}"
    links: list[Link] = []
    for code in codes:
        found = _WEB_URL_RE.match(code.strip())
        if found:
            links.append(Link(label, found.group(0)))
    return links


# Calendar invites (RFC 5545): lines unfolded, then the properties a reader sees.
_CALENDAR_TYPES = frozenset({"text/calendar", "application/ics", "text/x-vcalendar"})
_CALENDAR_EXTS = frozenset({"ics", "ical", "icalendar", "ifb", "vcs"})
_ICS_UNFOLD_RE = re.compile(r"\r?\n[ \t]")
_ICS_NAME_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
_ICS_PARAMS_RE = re.compile(r"(?:[^\":\n]|\"[^\"\n]*\")*:")
_ICS_ALTREP_RE = re.compile(r"altrep\s*=\s*\"([^\"]*)\"", re.I)
_ICS_ESCAPE_RE = re.compile(r"\\([nN]|.)")
_ICS_HTML_RE = re.compile(r"<(?:p|br|a|div|span|b|i|u|ul|ol|li|html|body|table)[\s/>]", re.I)
_ICS_TEXT_PROPS = {
    "SUMMARY": "Summary",
    "LOCATION": "Location",
    "DESCRIPTION": "Description",
    "COMMENT": "Comment",
    "X-ALT-DESC": "Description",
}
_ICS_URI_PROPS = frozenset({"URL", "ATTACH", "CONFERENCE", "IMAGE"})


def _ics_unescape(value: str) -> str:
    return _ICS_ESCAPE_RE.sub(lambda m: "\n" if m.group(1) in "nN" else m.group(1), value)


def _calendar(text: str, defects: _Defects) -> tuple[str, tuple[Link, ...]]:
    """The readable text (summary, location, description, links) of an iCalendar file and
    the web links it carries (URL/ATTACH/CONFERENCE values, ALTREP parameters, addresses
    in the texts, anchors of an HTML description). Linear in the size of ``text``."""
    text = _ICS_UNFOLD_RE.sub("", text)
    lines: list[str] = []
    links: list[Link] = []
    plain_description = False
    for line in text.splitlines():
        name_match = _ICS_NAME_RE.match(line)
        if name_match is None:
            continue
        name = name_match.group(0).upper()
        if name not in _ICS_TEXT_PROPS and name not in _ICS_URI_PROPS:
            continue
        params = _ICS_PARAMS_RE.match(line, name_match.end())
        if params is None:
            continue
        param_text, value = line[name_match.end() : params.end() - 1], line[params.end() :]
        for altrep in _ICS_ALTREP_RE.findall(param_text):
            if _WEB_URL_RE.match(altrep):
                links.append(Link(altrep, altrep))
        if name in _ICS_URI_PROPS:
            if "base64" in param_text.lower() or "binary" in param_text.lower():
                continue  # an inline file, not an address
            value = value.strip()
            if _WEB_URL_RE.match(value):
                links.append(Link(value, value[:MAX_HREF_CHARS]))
                lines.append(f"{name.title()}: {value}")
            continue
        value = _ics_unescape(value)
        html = "html" in param_text.lower() or bool(_ICS_HTML_RE.search(value[:4096]))
        if name == "X-ALT-DESC" and plain_description and not html:
            continue
        if name == "DESCRIPTION":
            plain_description = True
        if html:  # HTML in a description (Google Calendar writes it so): its text and anchors
            value = _html_to_text(value, links, defects)
        _url_links(value, links)
        if value.strip():
            lines.append(f"{_ICS_TEXT_PROPS[name]}: {value.strip()}")
    unique: dict[str, Link] = {}
    for link in links:
        if link.href and link.href not in unique:
            unique[link.href] = link
    return "\n".join(lines), tuple(list(unique.values())[:MAX_ATTACHMENT_LINKS])


def _attachment(part: MimePart, info: _PartHeaders, defects: _Defects) -> Attachment:
    filename, ctype = info.filename, info.ctype
    size, head, tail, data = _payload(part, info.cte)
    sniffed = _sniff(head)
    encrypted = _encrypted(head, tail)
    name = filename.lower().rstrip(". ")
    ext = name.rpartition(".")[2] if "." in name else ""
    text = ""
    traits: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    links: tuple[Link, ...] = ()
    calendar = False
    if size and not sniffed and _is_web_page(ctype, ext, head):
        traits = _html_traits(head, tail, data)
    if data is not None and sniffed in _QR_IMAGE_TYPES:
        codes = _qr_codes(data, filename, defects)
        if codes:
            links = tuple(_qr_links(codes, filename))
            text = _normalise_text("\n".join(codes))[:ATTACHMENT_TEXT_CHARS]
    if data is not None and 0 < size < ATTACHMENT_TEXT_MAX_SIZE and not sniffed:
        if ctype.startswith("text/"):
            text, problem = _decode_bytes(data, info.charset())
            if problem:
                defects.add(f"attachment {filename!r}: {problem}")
            if ctype == "text/html":
                text = _html_to_text(text, None, defects)
        elif b"\x00" not in data:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = ""
        calendar = (
            ctype in _CALENDAR_TYPES
            or ext in _CALENDAR_EXTS
            or text.lstrip()[:15].upper() == "BEGIN:VCALENDAR"
        )
        if calendar:
            try:
                text, links = _calendar(text, defects)
            except Exception as exc:  # keep the raw text rather than lose the part
                defects.add(f"calendar {filename!r} could not be read: {type(exc).__name__}")
        text = _normalise_text(text)[:ATTACHMENT_TEXT_CHARS]
    return Attachment(
        filename, ctype, sniffed, size, text, encrypted, traits, codes, links, calendar
    )


class _PartHeaders:
    """The MIME headers of one part, read in a single pass over its raw header list."""

    __slots__ = ("content_type", "cte", "ctype", "disposition", "filename")

    def __init__(self, part: MimePart, known: dict[str, str] | None = None) -> None:
        """``known``: the part's first headers when already collected (the top level)."""
        content_type = disposition = cte = None
        if known is not None:
            content_type = known.get("content-type")
            disposition = known.get("content-disposition")
            cte = known.get("content-transfer-encoding")
        else:
            for name, value in part.raw_items():
                key = name.lower()
                if key == "content-type":
                    if content_type is None:
                        content_type = str(value)
                elif key == "content-disposition":
                    if disposition is None:
                        disposition = str(value)
                elif key == "content-transfer-encoding" and cte is None:
                    cte = str(value)
        # Same rules as email.message.Message.get_content_type().
        ctype = content_type.split(";", 1)[0].strip().lower() if content_type else ""
        if not ctype:
            ctype = part.get_default_type()
        elif ctype.count("/") != 1:
            ctype = "text/plain"
        self.ctype: str = ctype
        self.cte: str = cte.strip().lower() if cte else ""
        self.content_type = content_type
        self.disposition: str = disposition.split(";", 1)[0].strip().lower() if disposition else ""
        self.filename = ""
        if (disposition and "name" in disposition.lower()) or (
            content_type and "name" in content_type.lower()
        ):
            self.filename = _part_filename(part)

    def charset(self) -> str | None:
        """The declared charset parameter, lower-cased, or None."""
        found = _CHARSET_RE.search(self.content_type) if self.content_type else None
        return found.group(1).lower() if found else None


def _part_filename(part: MimePart) -> str:
    """Decoded filename: RFC 2231 and RFC 2047, unicode (U+202E too) kept as sent."""
    try:
        name = part.get_filename()
    except Exception:
        name = None
    if not name:
        return ""
    return _decode_words(_header_str(name)).strip()


# --------------------------------------------------------------------------------------
# The MIME walk.


class _Body:
    """Readable content of the message itself, or of one attached message/rfc822."""

    __slots__ = ("filename", "html", "is_main", "parent", "parts", "plain", "size", "summary")

    def __init__(self, parent: _Body | None = None) -> None:
        self.parts: list[tuple[MimePart, _PartHeaders]] = []  # read after the walk
        self.plain: list[str] = []
        self.html: list[str] = []
        self.is_main = parent is None  # links are collected for the message itself only
        self.parent = parent
        self.size = 0
        self.summary = ""
        self.filename = ""

    def add_size(self, size: int) -> None:
        body: _Body | None = self.parent if self.is_main else self
        while body is not None:
            body.size += size
            body = body.parent


def _nested_summary(inner: Any) -> str:
    """The header lines a reader sees on top of an attached message."""
    if not isinstance(inner, MimePart):
        return ""
    headers = _first_headers(inner)
    lines = [
        f"{label}: {_header_text(headers[key])}"
        for key, label in (("from", "From"), ("date", "Date"), ("subject", "Subject"))
        if key in headers
    ]
    return "\n".join(lines)


class _Reader:
    """Turns body parts into text, HTML text and links, collecting notes as it goes."""

    __slots__ = ("defects", "html_links", "text_links")

    def __init__(self, defects: _Defects) -> None:
        self.defects = defects
        self.html_links: list[Link] = []
        self.text_links: list[Link] = []

    def decode(self, part: MimePart, info: _PartHeaders, body: _Body) -> None:
        """Decode one body part ourselves and add it to ``body``."""
        decoded = part.get_payload(decode=True)
        data = decoded if isinstance(decoded, bytes) else b""
        body.add_size(len(data))
        if not data:
            return
        kind = "html" if info.ctype == "text/html" else "text"
        if len(data) > _MAX_PART_BYTES:
            half = _MAX_PART_BYTES // 2
            self.defects.cut(f"{kind} part: only the first and last {half} bytes were read")
            data = data[:half] + b"\n" + data[len(data) - half :]
        text, problem = _decode_bytes(data, info.charset())
        if problem:
            self.defects.add(f"{kind} part: {problem}")
        self.add(part, kind, text, body)

    def add(self, part: MimePart, kind: str, text: str, body: _Body) -> None:
        """Add the decoded text of one body part to ``body``."""
        if any("Base64" in type(defect).__name__ for defect in part.defects):
            self.defects.add(f"{kind} part: damaged base64 content, read as far as possible")
        if kind == "html":
            if "\x00" in text:
                text = text.replace("\x00", "")
            try:
                links = self.html_links if body.is_main else None
                # Normalised after extraction: the visible text is much shorter.
                html_text = _html_to_text(text, links, self.defects)
                body.html.append(_normalise_text(html_text))
            except Exception as exc:
                self.defects.add(f"html part could not be decoded: {type(exc).__name__}: {exc}")
        else:
            text = _normalise_text(text)
            body.plain.append(text)
            if body.is_main:
                _url_links(text[:MAX_TEXT_CHARS], self.text_links)

    def read(self, body: _Body) -> None:
        """Fill ``body`` from its parts, decoding each one here."""
        for part, info in body.parts:
            if self.defects.late():
                return
            try:
                self.decode(part, info, body)
            except Exception as exc:
                self.defects.add(f"body part could not be read: {type(exc).__name__}: {exc}")


def _walk(
    root: MimePart,
    root_headers: dict[str, str],
    main: _Body,
    entries: list[Attachment | _Body],
    defects: _Defects,
) -> None:
    """One pre-order pass over the MIME tree, sorting parts into body parts (collected in
    their ``_Body``, read afterwards) and attachments (read here).

    Attached messages (message/rfc822 with a filename or disposition "attachment")
    become one attachment named after the part or "forwarded.eml", whose ``text`` is
    the attached message's From/Date/Subject lines and its own text: that is quoted
    material (forwarded mail, bounces carrying our own outgoing mail), not something
    the sender wrote, so it stays out of ``text`` and ``links``; files inside it are
    listed as attachments too. A message/rfc822 part shown *inline* (no disposition)
    is displayed by mail clients as part of the body, so its text is folded into the
    body like any other inline part.
    """
    stack: list[tuple[MimePart, _Body, bool]] = [(root, main, False)]
    visited = 0
    # Past MAX_PARTS the walk goes on without reading anything, keeping only the last
    # TAIL_PARTS leaves: the end of a message padded with thousands of parts is read too.
    tail: deque[tuple[MimePart, _Body, bool]] = deque(maxlen=TAIL_PARTS)
    skipped = 0
    while stack:
        part, body, forced = stack.pop()
        visited += 1
        if visited > MAX_PARTS or defects.late():
            if defects.out_of_time:
                return
            if part.is_multipart():
                children = part.get_payload()
                if isinstance(children, list):
                    stack.extend(
                        (child, body, forced)
                        for child in reversed(children)
                        if isinstance(child, MimePart)
                    )
            else:
                if len(tail) == TAIL_PARTS:
                    skipped += 1
                tail.append((part, body, forced))
            continue
        _visit(part, body, forced, root, root_headers, stack, entries, defects)
    if visited > MAX_PARTS:
        for part, body, forced in tail:
            _visit(part, body, forced, root, root_headers, stack, entries, defects)
        what = f"{skipped} parts in the middle were not read" if skipped else "all were read"
        defects.cut(f"more than {MAX_PARTS} MIME parts; {what}")


def _visit(
    part: MimePart,
    body: _Body,
    forced: bool,
    root: MimePart,
    root_headers: dict[str, str],
    stack: list[tuple[MimePart, _Body, bool]],
    entries: list[Attachment | _Body],
    defects: _Defects,
) -> None:
    """One step of :func:`_walk`: children of a multipart go on ``stack``, a body part to
    its ``_Body``, anything else becomes an attachment."""
    try:
        info = _PartHeaders(part, root_headers if part is root else None)
        ctype = info.ctype
        if part.is_multipart():
            children = part.get_payload()
            if not isinstance(children, list):
                return
            if ctype.startswith("message/"):
                if ctype not in ("message/rfc822", "message/global"):
                    return  # delivery-status and the like: header blocks only
                if forced or info.filename or info.disposition == "attachment":
                    if len(entries) >= MAX_ATTACHMENTS:
                        defects.add(_TOO_MANY_ATTACHMENTS)
                        return
                    nested = _Body(body)
                    nested.filename = info.filename or "forwarded.eml"
                    nested.summary = _nested_summary(children[0] if children else None)
                    entries.append(nested)
                    body, forced = nested, False
            elif info.disposition == "attachment":
                forced = True
            stack.extend(
                (child, body, forced) for child in reversed(children) if isinstance(child, MimePart)
            )
            return

        if (
            not forced
            and not info.filename
            and info.disposition != "attachment"
            and (ctype in ("text/plain", "text/html") or ctype.startswith("multipart/"))
        ):
            body.parts.append((part, info))  # a multipart here has no boundary: text
            return
        if len(entries) >= MAX_ATTACHMENTS:
            defects.add(_TOO_MANY_ATTACHMENTS)
            return
        attachment = _attachment(part, info, defects)
        body.add_size(attachment.size)
        entries.append(attachment)
    except Exception as exc:
        defects.add(f"MIME part could not be read: {type(exc).__name__}: {exc}")


def _nested_attachment(body: _Body) -> Attachment:
    text = "\n".join(body.plain) if any(t.strip() for t in body.plain) else "\n".join(body.html)
    if body.summary:
        text = f"{body.summary}\n\n{text}"
    return Attachment(
        body.filename,
        "message/rfc822",
        "message/rfc822",
        body.size,
        text[:ATTACHMENT_TEXT_CHARS],
        False,
    )


# --------------------------------------------------------------------------------------
# Entry point.


def _as_bytes(raw: Any) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, (bytearray, memoryview)):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    if raw is None:
        return b""
    return bytes(raw)


def _headers_only(data: bytes, defects: _Defects) -> MimePart | None:
    """Fallback when mail-parser failed (e.g. absurd nesting): headers, no body."""
    try:
        return BytesParser(policy=compat32).parsebytes(data, headersonly=True)
    except Exception as exc:
        defects.add(f"headers could not be parsed: {type(exc).__name__}: {exc}")
        return None


def parse_message(raw: bytes, *, time_budget: float = TIME_BUDGET) -> Message:
    """Parse raw RFC 5322 bytes into a :class:`Message`. Never raises.

    Whatever could not be read is described in ``Message.defects`` (mail-parser's own
    defects included) and everything else is still returned. Time and memory per message
    are bounded: header fields, MIME nesting, parts, text and HTML markup have limits
    (see the constants above), and the clock is read between the stages; after
    ``time_budget`` seconds no more parts are read. Whatever a limit left unread is also
    named in ``Message.unchecked``.
    """
    try:
        return _parse(raw, time.thread_time() + time_budget)
    except Exception as exc:  # last resort: a bug here must not stop the mail flow
        try:
            size = len(raw)
        except Exception:
            size = 0
        note = f"message could not be parsed: {type(exc).__name__}: {exc}"
        return Message(
            size=size,
            defects=(" ".join(note.split())[:_DEFECT_CHARS],),
            unchecked=("message could not be parsed",),
        )


def _parse(raw: bytes, deadline: float) -> Message:
    data = _as_bytes(raw)
    size = len(data)
    defects = _Defects(deadline)
    mail: _Mail | None = None
    root: MimePart | None
    data = _limit_mime_depth(_cap_headers(data, defects), defects)
    try:
        mail = _read_mail(data, defects)
        root = mail.message
    except Exception as exc:
        defects.add(f"mail-parser failed: {type(exc).__name__}: {exc}")
        defects.cut("MIME structure could not be parsed; body not read")
        mail = None
        root = _headers_only(data, defects)
    del data
    if root is None:
        return Message(size=size, defects=tuple(defects.items), unchecked=tuple(defects.unchecked))

    if mail is not None:
        for note in mail.notes:
            defects.add(note)
    headers = _first_headers(root)
    parsed: dict[str, Any] = mail.addresses if mail is not None else {}
    get = headers.get

    from_ = _address_header(parsed.get("from"), get("from"), defects, "From")
    sender = _parse_addresses(headers["sender"]) if "sender" in headers else ()

    date = None
    if "date" in headers:
        date = _message_date(mail.date if mail is not None else None, headers["date"], defects)

    references_raw = _header_str(get("references", ""))
    references = tuple(_MSG_ID_RE.findall(references_raw)) or tuple(references_raw.split())

    main = _Body()
    entries: list[Attachment | _Body] = []
    reader = _Reader(defects)
    if mail is not None:
        _walk(root, headers, main, entries, defects)
        reader.read(main)
        for entry in entries:
            if isinstance(entry, _Body):
                reader.read(entry)
        if not main.plain and not main.html and mail.categories & _RECOVERED_DEFECTS:
            # A multipart whose start boundary never came: mail-parser recovers its parts.
            for text in mail.text_plain:
                if isinstance(text, str):
                    reader.add(root, "text", text, main)
            for text in mail.text_html:
                if isinstance(text, str):
                    reader.add(root, "html", text, main)
    else:
        defects.add("body not read")
    html_links, text_links = reader.html_links, reader.text_links
    attachments = tuple(_nested_attachment(e) if isinstance(e, _Body) else e for e in entries)
    # Links shown by attachments (QR codes, calendar invites) are links too; they get a
    # share of MAX_LINKS that the body's links cannot crowd out.
    shown = [link for a in attachments for link in a.links][:MAX_ATTACHMENT_LINKS]
    links = (html_links + text_links)[: MAX_LINKS - len(shown)] + shown

    return Message(
        from_=from_[0] if from_ else None,
        reply_to=_address_header(parsed.get("reply-to"), get("reply-to"), defects, "Reply-To"),
        return_path=_return_path(get("return-path")),
        sender=sender[0] if sender else None,
        to=_address_header(parsed.get("to"), get("to"), defects, "To"),
        cc=_address_header(parsed.get("cc"), get("cc"), defects, "Cc"),
        subject=_cap(_header_text(get("subject", "")), "subject", defects),
        date=date,
        message_id=_header_str(get("message-id", ""))[:MAX_TEXT_CHARS],
        in_reply_to=_header_str(get("in-reply-to", ""))[:MAX_TEXT_CHARS],
        references=references[:MAX_LINKS],
        text=_join_parts(main.plain, "text", defects),
        html_text=_join_parts(main.html, "html_text", defects),
        links=tuple(links),
        attachments=attachments,
        auth=_auth_results(get("authentication-results")),
        list_id=_header_str(get("list-id", ""))[:MAX_TEXT_CHARS],
        auto_submitted=_header_str(get("auto-submitted", "")).lower()[:MAX_TEXT_CHARS],
        precedence=_header_str(get("precedence", "")).lower()[:MAX_TEXT_CHARS],
        list_unsubscribe=_header_str(get("list-unsubscribe", ""))[:MAX_TEXT_CHARS],
        defects=tuple(defects.items),
        size=size,
        unchecked=tuple(defects.unchecked),
    )


# --------------------------------------------------------------------------------------
# Allocator tuning for the HTML parser.


def tune_allocator() -> bool:
    """Ask glibc to keep 4 MiB of slack at the top of the heap (``M_TOP_PAD``).

    Every selectolax/lexbor document allocates and frees a few hundred KiB (a 1 MiB pad
    is enough). With glibc's defaults that memory is handed back to the kernel when the
    document is freed and faulted in again, zero-filled, by the next one, between two
    mail-parser runs: measured on the benchmark mix, reading an HTML body cost ~160 µs
    with the defaults and ~95 µs with the pad (mail-parser itself is not affected).

    Process-wide and glibc only, so it is not done on import: a long-running caller
    (``inbox-guard check``/``scan``, the daemon) calls it once at start. It holds at most
    4 MiB of memory. Returns True when the setting was made; does nothing (False) off
    glibc or when ``GUARD_MALLOC_DEFAULTS=1`` is set.
    """
    if sys.platform != "linux" or os.environ.get("GUARD_MALLOC_DEFAULTS"):
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        return bool(mallopt(-2, 4 << 20))  # M_TOP_PAD, from <malloc.h>; 1 on success
    except (OSError, ValueError, AttributeError):
        return False
