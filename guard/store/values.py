"""Values on their way into (and out of) the store: text every database accepts, and times.

Every string column is given :class:`CleanString` or :class:`CleanText` (see
``models``), so whatever a message held (NUL, control characters, lone surrogates,
over-long values) is cleaned by :func:`clean_text` before any database sees it. Times are
kept as naive UTC: :func:`utcnow`, :func:`as_utc_naive`, and :func:`iso_z` to show one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

# What no column may hold: C0 controls, DEL, C1 controls; lone surrogates (not UTF-8).
_CONTROLS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_SUSPECT = re.compile(f"[\t\n\r{_CONTROLS}\ud800-\udfff]")
_SUSPECT_TEXT = re.compile(f"[\r{_CONTROLS}\ud800-\udfff]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_DROP = re.compile(f"[{_CONTROLS}]")
_LINE_BREAKS = re.compile("\r\n?")
_SPACES = re.compile("[\t\n\r]")
INDEX_VALUE_BYTES = 1000  # a string column in an index: at most this many UTF-8 bytes


def clean_text(
    value: str,
    *,
    length: int | None = None,
    multiline: bool = False,
    max_bytes: int | None = None,
) -> str:
    """``value`` as every database accepts it: lone surrogates replaced (U+FFFD), control
    characters removed (a one-line column turns tab, CR and LF into spaces; a text column
    keeps tab and LF, CR LF and a lone CR becoming LF), then cut to ``length`` characters
    and ``max_bytes`` UTF-8 bytes (whole characters only)."""
    suspect = _SUSPECT_TEXT if multiline else _SUSPECT
    if suspect.search(value) is not None:
        value = _SURROGATES.sub("\ufffd", value)
        value = _LINE_BREAKS.sub("\n", value) if multiline else _SPACES.sub(" ", value)
        value = _DROP.sub("", value)
    if length is not None and len(value) > length:
        value = value[:length]
    if max_bytes is not None and len(value) * 4 > max_bytes:
        data = value.encode("utf-8")
        if len(data) > max_bytes:
            value = data[:max_bytes].decode("utf-8", "ignore")
    return value


class CleanString(sa.types.TypeDecorator[str]):
    """VARCHAR(n) whose every bound value (insert, update, where) goes through
    :func:`clean_text`: one line, at most n characters (PostgreSQL refuses longer, SQLite
    would keep it), at most ``max_bytes`` bytes where the column is indexed."""

    impl = sa.String
    cache_ok = True

    def __init__(self, length: int | None = None, max_bytes: int | None = None) -> None:
        super().__init__(length)
        self.length = length
        self.max_bytes = max_bytes

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if not isinstance(value, str):
            return value
        return clean_text(value, length=self.length, max_bytes=self.max_bytes)

    def clean(self, value: str) -> str:
        return str(self.process_bind_param(value, None))


class CleanText(sa.types.TypeDecorator[str]):
    """TEXT whose every bound value goes through :func:`clean_text` (several lines)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if not isinstance(value, str):
            return value
        return clean_text(value, multiline=True)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def as_utc_naive(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        try:
            value = value.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # 9999-12-31 in a zone west of UTC: past datetime.max
            value = datetime.max if value.year > 1 else datetime.min
    return value


def iso_z(value: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with a Z, to the second; None stays None."""
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None
