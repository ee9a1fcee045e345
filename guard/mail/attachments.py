"""One attached part to an :class:`Attachment`: what its bytes are and what it shows.

Magic-number sniffing, password protection visible without extracting anything (zip,
RAR, 7z, PDF, Office), the traits of an attached web page (forms, scripts, redirects),
QR codes in images (Pillow and zxing-cpp, imported on the first image) and the readable
text and links of calendar invites. Big base64 payloads are not decoded whole.
"""

from __future__ import annotations

import io
import re
from email.message import Message as MimePart
from typing import Any

import filetype

from guard.mail.decode import (
    B64_JUNK,
    B64_JUNK_KEEP_PAD,
    b64decode,
    decode_bytes,
    normalise_text,
    valid_unicode,
)
from guard.mail.headers import PartHeaders
from guard.mail.html import html_to_text
from guard.mail.limits import (
    ATTACHMENT_TEXT_CHARS,
    ATTACHMENT_TEXT_MAX_SIZE,
    HTML_SCAN_BYTES,
    MAX_ATTACHMENT_LINKS,
    MAX_HREF_CHARS,
    QR_MAX_CODES,
    QR_MAX_IMAGE_BYTES,
    QR_MAX_IMAGES,
    QR_MAX_PIXELS,
    QR_MIN_SIDE,
    QR_TEXT_CHARS,
    Defects,
)
from guard.mail.links import url_links
from guard.mail.model import Attachment, Link

_FULL_DECODE_CHARS = 1_500_000  # base64 attachments up to this long are decoded whole
_PEEK_BYTES = 64 * 1024  # otherwise only this much of the head and of the tail is decoded
_SNIFF_BYTES = 8192

# Encryption markers of archives and documents.
_SEVENZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
_SEVENZIP_AES = b"\x06\xf1\x07\x01"  # coder id of 7zAES
_RAR4_MAGIC = b"Rar!\x1a\x07\x00"
_RAR5_MAGIC = b"Rar!\x1a\x07\x01\x00"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OLE_ENCRYPTED = "EncryptedPackage".encode("utf-16-le")  # password-protected Office file


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
        head = b64decode(raw[:peek].encode("ascii", "ignore").translate(None, B64_JUNK))
        tail_chars = raw[-peek:].encode("ascii", "ignore").translate(None, B64_JUNK_KEEP_PAD)
        tail = b64decode(tail_chars[len(tail_chars) % 4 :])
        end = raw[-64:].rstrip()
        padding = min(2, len(end) - len(end.rstrip("=")))
        chars = len(raw) - raw.count("\n") - raw.count("\r") - raw.count(" ")
        size = max(0, (chars - padding) * 3 // 4)
        return size, head, tail, None
    if isinstance(raw, str):
        data = b64decode(raw.encode("ascii", "ignore"))
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


def _qr_codes(data: bytes, filename: str, defects: Defects) -> tuple[str, ...]:
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
            texts.append(valid_unicode(text[:QR_TEXT_CHARS]))
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


def _calendar(text: str, defects: Defects) -> tuple[str, tuple[Link, ...]]:
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
            value = html_to_text(value, links, defects)
        url_links(value, links)
        if value.strip():
            lines.append(f"{_ICS_TEXT_PROPS[name]}: {value.strip()}")
    unique: dict[str, Link] = {}
    for link in links:
        if link.href and link.href not in unique:
            unique[link.href] = link
    return "\n".join(lines), tuple(list(unique.values())[:MAX_ATTACHMENT_LINKS])


def read_attachment(part: MimePart, info: PartHeaders, defects: Defects) -> Attachment:
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
            text = normalise_text("\n".join(codes))[:ATTACHMENT_TEXT_CHARS]
    if data is not None and 0 < size < ATTACHMENT_TEXT_MAX_SIZE and not sniffed:
        if ctype.startswith("text/"):
            text, problem = decode_bytes(data, info.charset())
            if problem:
                defects.add(f"attachment {filename!r}: {problem}")
            if ctype == "text/html":
                text = html_to_text(text, None, defects)
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
        text = normalise_text(text)[:ATTACHMENT_TEXT_CHARS]
    return Attachment(
        filename, ctype, sniffed, size, text, encrypted, traits, codes, links, calendar
    )
