"""Bytes and raw header values to text: charsets, RFC 2047 encoded words, lenient base64.

The decoding helpers shared by the header, attachment and body readers. Nothing here
raises on bad input: undecodable bytes are read with a fallback charset and the problem
is returned as a note.
"""

from __future__ import annotations

import binascii
import codecs
import re
import unicodedata
from functools import lru_cache
from typing import Any

_NEWLINES_RE = re.compile(r"\r\n?")
_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
B64_JUNK = bytes(sorted(set(range(256)) - set(_B64_ALPHABET)))
B64_JUNK_KEEP_PAD = bytes(sorted(set(range(256)) - set(_B64_ALPHABET + b"=")))

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


def valid_unicode(text: str) -> str:
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


def header_str(value: Any) -> str:
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


def decode_bytes(data: bytes, charset: str | None) -> tuple[str, str]:
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
            return valid_unicode(data.decode(codec)), ""
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


def b64decode(data: bytes) -> bytes:
    """Lenient base64: junk characters ignored, bad padding repaired, never raises."""
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        clean = data.translate(None, B64_JUNK)
        if len(clean) % 4 == 1:
            clean = clean[:-1]
        try:
            return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
        except (binascii.Error, ValueError):
            return b""


def decode_words(text: str) -> str:
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
            out.append(decode_bytes(b"".join(pending), pending_charset)[0])
            pending, pending_charset = [], None
        if pending_charset is None:
            out.append(gap)
        try:
            word = match.group(3).encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            word = match.group(3).encode("utf-8", "replace")
        if match.group(2) in "bB":
            pending.append(b64decode(word))
        else:
            pending.append(binascii.a2b_qp(word, header=True))
        pending_charset = charset
        pos = match.end()
    if pending_charset is not None:
        out.append(decode_bytes(b"".join(pending), pending_charset)[0])
    out.append(text[pos:])
    return "".join(out)


def header_text(value: Any) -> str:
    """A display header (Subject, a display name): decoded and whitespace-collapsed."""
    return " ".join(decode_words(header_str(value)).split())


def normalise_text(text: str) -> str:
    """LF line ends, no NUL characters, Unicode NFC (composed accents, as mail-parser does)."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = _NEWLINES_RE.sub("\n", text)
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text
