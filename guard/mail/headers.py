"""Reading header values into the model: addresses, Date, Authentication-Results,
the raw first occurrence of each header the guard reads, and one MIME part's
Content-Type / Content-Disposition / Content-Transfer-Encoding (``PartHeaders``).

mail-parser's own readings of the address and Date headers come from
:mod:`guard.mail.mime`; this module chooses between them and its own lenient reading.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message as MimePart
from functools import lru_cache
from typing import Any

from guard.mail.decode import decode_words, header_str
from guard.mail.limits import Defects
from guard.mail.model import Address, AuthResults

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

_ANGLE_ADDR_RE = re.compile(r"<([^<>]*)>")
MSG_ID_RE = re.compile(r"<[^<>]*>")
_CHARSET_RE = re.compile(r"(?<![\w-])charset\s*=\s*\"?([^\s\";]+)", re.I)

# Authentication-Results (RFC 8601).
_AR_COMMENT_RE = re.compile(r"\([^()]*\)")
_AR_METHODS = frozenset({"spf", "dkim", "dmarc"})
_AR_EQUALS_RE = re.compile(r"\s*=\s*")


def first_headers(part: MimePart) -> dict[str, str]:
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
            addr = header_str(addr)
        addr = addr.strip().lower()
        if not addr:
            continue
        if name:
            if not name.isascii() or "\x00" in name:
                name = header_str(name)
            name = " ".join(name.split())
            if name.lower() == addr:
                name = ""
        out.append(Address(name, addr))
    return tuple(out)


def parse_addresses(raw: str) -> tuple[Address, ...]:
    """Own mailbox parsing, for Sender and when mail-parser found nothing usable."""
    try:
        pairs = email.utils.getaddresses([header_str(raw)])
    except Exception:
        return ()
    return _to_addresses([(decode_words(name), addr) for name, addr in pairs if "@" in addr])


def address_header(
    parsed: Any, raw: str | None, defects: Defects, label: str
) -> tuple[Address, ...]:
    """mail-parser's mailboxes; our own reading when it rejected a present header or the
    header carries raw 8-bit bytes (mail-parser leaves those as backslash escapes)."""
    if isinstance(raw, str) and not raw.isascii():
        found = parse_addresses(raw)
        if found:
            return found
    found = _to_addresses(parsed)
    if found or raw is None or not header_str(raw):
        return found
    found = parse_addresses(raw)
    if found:
        defects.add(f"{label} header is malformed; read leniently")
    return found


def return_path(raw: str | None) -> str:
    if raw is None:
        return ""
    value = header_str(raw)
    match = _ANGLE_ADDR_RE.search(value)
    if match:
        value = match.group(1)
    return value.strip().strip("<>").strip().lower()


def message_date(parsed: Any, raw: str, defects: Defects) -> datetime | None:
    """Date header as an aware datetime in the sender's own UTC offset, or None."""
    value = header_str(raw)
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


def auth_results(raw: str | None) -> AuthResults:
    """Verdicts of one Authentication-Results header (RFC 8601), comments removed.

    Mostly plain string work (this runs for every message). Results are read as
    ``method=verdict`` tokens, so a header that forgets the ";" between results is
    read too; ``header.d`` (else the domain of ``header.i``) is taken from the
    properties following a dkim result.
    """
    if raw is None:
        return AuthResults()
    value = header_str(raw).lower()
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


class PartHeaders:
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
    return decode_words(header_str(name)).strip()
