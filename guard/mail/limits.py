"""Limits against hostile input, and ``Defects``: the notes of what a message did wrong.

Every bound the parser applies (text sizes, parts, nesting, tags, header bytes, the
time budget, QR images...) is a named constant here, so what a crafted message can cost
is readable in one place. ``Defects`` collects the one-line problem notes of one
message, the subset that means "not read whole" (``Message.unchecked``), and the
message's CPU-time deadline.
"""

from __future__ import annotations

import time

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

DEFECT_CHARS = 300
"""A defect note is cut to this many characters."""
_MAX_UNCHECKED = 20


class Defects:
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
        note = " ".join(note.split())[:DEFECT_CHARS]
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
        if len(note) > DEFECT_CHARS:
            note = note[: DEFECT_CHARS - 1] + "…"
        if note and note not in self._seen and len(self.items) < MAX_DEFECTS:
            self._seen.add(note)
            self.items.append(note)
