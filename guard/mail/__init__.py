"""Mail as data: what one message says, read from its bytes.

Owns the message model (``Message``, ``Address``, links, attachments), parsing raw bytes
into it with mail-parser and the standard library (header decoding, the MIME walk,
HTML-to-text with hidden-text detection, attachment sniffing), Message-ID handling and
reading .eml/mbox files from disk. Everything here works on bytes already in memory.

Must not import any other part of ``guard`` except ``guard.errors``: no policy, no
mailbox, no store, no configuration. (Checked by ``tests/unit/test_layers.py``.)

Where each concern lives:

- ``model``: the dataclasses (``Message``, ``Address``, ``Link``, ``Attachment``,
  ``AuthResults``).
- ``parse``: :func:`parse_message`, the MIME walk and the text limits of the result.
- ``limits``: every bound against hostile input, and the defect notes (``Defects``).
- ``mime``: raw bytes to the MIME tree (raw-byte limits, the timed feed) and the pieces
  of mail-parser the guard uses (``read_mail``).
- ``headers``: addresses, Date, Authentication-Results, a part's MIME headers.
- ``decode``: charsets, RFC 2047 encoded words, lenient base64.
- ``html``: HTML to visible text, hidden text, anchors; ``links``: URLs in plain text.
- ``attachments``: sniffing, encrypted archives, web-page traits, QR codes, calendars.
- ``memory``: :func:`tune_allocator` (glibc heap tuning for the HTML parser).
- ``msgid``: Message-ID handling; ``sources``: .eml/mbox files and folders on disk.

Other packages import from ``guard.mail`` (the names below), not from its modules. The
limits are re-exported, except the QR-code details (pixels, bytes, codes per image),
which only ``attachments`` uses.
"""

from guard.mail.limits import (
    ATTACHMENT_TEXT_CHARS,
    ATTACHMENT_TEXT_MAX_SIZE,
    HTML_SCAN_BYTES,
    MAX_ATTACHMENT_LINKS,
    MAX_ATTACHMENTS,
    MAX_DEFECTS,
    MAX_HEADER_BLOCK_BYTES,
    MAX_HEADER_BYTES,
    MAX_HREF_CHARS,
    MAX_HTML_DEPTH,
    MAX_HTML_TAGS,
    MAX_LINKS,
    MAX_MIME_DEPTH,
    MAX_PARTS,
    MAX_TEXT_CHARS,
    QR_MAX_IMAGES,
    SCRIPT_HREF_CHARS,
    TAIL_PARTS,
    TIME_BUDGET,
)
from guard.mail.memory import tune_allocator
from guard.mail.model import Address, Attachment, AuthResults, Link, Message
from guard.mail.parse import parse_message

__all__ = [
    "ATTACHMENT_TEXT_CHARS",
    "ATTACHMENT_TEXT_MAX_SIZE",
    "HTML_SCAN_BYTES",
    "MAX_ATTACHMENTS",
    "MAX_ATTACHMENT_LINKS",
    "MAX_DEFECTS",
    "MAX_HEADER_BLOCK_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HREF_CHARS",
    "MAX_HTML_DEPTH",
    "MAX_HTML_TAGS",
    "MAX_LINKS",
    "MAX_MIME_DEPTH",
    "MAX_PARTS",
    "MAX_TEXT_CHARS",
    "QR_MAX_IMAGES",
    "SCRIPT_HREF_CHARS",
    "TAIL_PARTS",
    "TIME_BUDGET",
    "Address",
    "Attachment",
    "AuthResults",
    "Link",
    "Message",
    "parse_message",
    "tune_allocator",
]
