"""Message-IDs as strict tokens.

A Message-ID, In-Reply-To or References header is written by the sender, so everything
taken from one (to thread a message, to search a folder, to write a draft's headers) goes
through here first. A valid id is ``<local@domain>`` in printable ASCII: ``local`` and
``domain`` made of RFC 5322 atext characters and dots, the domain optionally a
``[literal]``, at most MAX_ID_CHARS long, and never containing ``=?`` (the start of an
RFC 2047 encoded word, which a mail library may decode into anything, CR/LF included).
Anything else is dropped, never repaired.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_ID_CHARS = 250
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-"
_ID = re.compile(rf"<[{_ATEXT}]+@(?:[{_ATEXT}]+|\[[!-Z^-~]*\])>")
_PLAIN_LIST = re.compile(rf"[ \t]*{_ID.pattern}(?:[ \t]+{_ID.pattern})*[ \t]*")
_TOKENS = re.compile(r"<[^<>]*>")
_ITEM_SPLIT = re.compile(r"[ \t,]+")
_COMMENT = re.compile(r"\([^()]*\)")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def valid(token: str) -> str | None:
    """``token`` when it is one valid ``<local@domain>`` id, else None."""
    if (
        len(token) > MAX_ID_CHARS
        or not token.isascii()
        or "=?" in token
        or not _ID.fullmatch(token)
    ):
        return None
    return token


def _item_ids(item: str) -> list[str]:
    """The valid ids of one whitespace-separated item (``<a@x>`` or ``<a@x><b@y>``);
    nothing when the item is not made of bracketed tokens only."""
    found = _TOKENS.findall(item)
    if "".join(found) != item:
        return []
    return [t for t in found if valid(t)]


def parse_list(header: str | Iterable[str] | None) -> list[str]:
    """The valid ids of an In-Reply-To / References header (or of its items), in order,
    without repeats. Items that are not valid ids (comments, phrases, encoded words,
    non-ASCII, anything with a control character) are dropped. A header that is a single
    bare ``local@domain`` (some old mailers leave out the brackets) counts as that id."""
    if header is None:
        return []
    text = header if isinstance(header, str) else " ".join(header)
    if _PLAIN_LIST.fullmatch(text):  # the usual case: ids and spaces only
        plain = [t for t in _ID.findall(text) if len(t) <= MAX_ID_CHARS and "=?" not in t]
        return list(dict.fromkeys(plain))
    text = _FOLD.sub(" ", text)
    if any(ch in text for ch in "\r\n\x00"):
        return []  # a line break that is not folding: a broken or injected header
    text = _COMMENT.sub(" ", text).strip()
    if not text:
        return []
    items = [i for i in _ITEM_SPLIT.split(text) if i]
    if len(items) == 1 and "<" not in text and ">" not in text:
        bare = valid(f"<{items[0]}>")
        return [bare] if bare else []
    out: list[str] = []
    for item in items:
        for token in _item_ids(item):
            if token not in out:
                out.append(token)
    return out


def parse_one(header: str | None) -> str | None:
    """The id of a Message-ID header, when the whole header is exactly one valid id
    (comments aside), else None."""
    if not header:
        return None
    token = header.strip(" \t")
    if _ID.fullmatch(token):  # the usual case
        return valid(token)
    ids = parse_list(header)
    if len(ids) != 1:
        return None
    rest = _COMMENT.sub(" ", header).strip()
    if rest not in (ids[0], ids[0][1:-1]):
        return None
    return ids[0]
