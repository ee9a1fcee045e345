"""Raw RFC 5322 bytes to an immutable :class:`Message`: :func:`parse_message`.

The entry point and the MIME walk: the raw-byte limits and mail-parser reading
(:mod:`guard.mail.mime`), one pass over the MIME tree sorting parts into body parts and
attachments, ``_Reader`` turning body parts into text, HTML text and links, attached
messages summarised, and the text limits applied to the result. Parsing never raises:
whatever could not be read is reported in ``Message.defects`` (and, when part of the
message went unread, in ``Message.unchecked``) and the rest is kept.
"""

from __future__ import annotations

import time
from collections import deque
from email.message import Message as MimePart
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from guard.mail.attachments import read_attachment
from guard.mail.decode import decode_bytes, header_str, header_text, normalise_text
from guard.mail.headers import (
    MSG_ID_RE,
    PartHeaders,
    address_header,
    auth_results,
    first_headers,
    message_date,
    parse_addresses,
    return_path,
)
from guard.mail.html import html_to_text
from guard.mail.limits import (
    ATTACHMENT_TEXT_CHARS,
    DEFECT_CHARS,
    MAX_ATTACHMENT_LINKS,
    MAX_ATTACHMENTS,
    MAX_LINKS,
    MAX_PARTS,
    MAX_TEXT_CHARS,
    TAIL_PARTS,
    TIME_BUDGET,
    Defects,
)
from guard.mail.links import url_links
from guard.mail.mime import RECOVERED_DEFECTS, Mail, cap_headers, limit_mime_depth, read_mail
from guard.mail.model import Attachment, Link, Message

_MAX_PART_BYTES = 4 * MAX_TEXT_CHARS  # bytes of one body part ever handed to a codec
_TOO_MANY_ATTACHMENTS = f"more than {MAX_ATTACHMENTS} attachments; the rest ignored"


# --------------------------------------------------------------------------------------
# The text limits, applied to the texts of the result.


def _cap(text: str, what: str, defects: Defects) -> str:
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


def _join_parts(parts: list[str], what: str, defects: Defects) -> str:
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


# --------------------------------------------------------------------------------------
# The MIME walk.


class _Body:
    """Readable content of the message itself, or of one attached message/rfc822."""

    __slots__ = ("filename", "html", "is_main", "parent", "parts", "plain", "size", "summary")

    def __init__(self, parent: _Body | None = None) -> None:
        self.parts: list[tuple[MimePart, PartHeaders]] = []  # read after the walk
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
    headers = first_headers(inner)
    lines = [
        f"{label}: {header_text(headers[key])}"
        for key, label in (("from", "From"), ("date", "Date"), ("subject", "Subject"))
        if key in headers
    ]
    return "\n".join(lines)


class _Reader:
    """Turns body parts into text, HTML text and links, collecting notes as it goes."""

    __slots__ = ("defects", "html_links", "text_links")

    def __init__(self, defects: Defects) -> None:
        self.defects = defects
        self.html_links: list[Link] = []
        self.text_links: list[Link] = []

    def decode(self, part: MimePart, info: PartHeaders, body: _Body) -> None:
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
        text, problem = decode_bytes(data, info.charset())
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
                html_text = html_to_text(text, links, self.defects)
                body.html.append(normalise_text(html_text))
            except Exception as exc:
                self.defects.add(f"html part could not be decoded: {type(exc).__name__}: {exc}")
        else:
            text = normalise_text(text)
            body.plain.append(text)
            if body.is_main:
                url_links(text[:MAX_TEXT_CHARS], self.text_links)

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
    defects: Defects,
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
    defects: Defects,
) -> None:
    """One step of :func:`_walk`: children of a multipart go on ``stack``, a body part to
    its ``_Body``, anything else becomes an attachment."""
    try:
        info = PartHeaders(part, root_headers if part is root else None)
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
        attachment = read_attachment(part, info, defects)
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


def _headers_only(data: bytes, defects: Defects) -> MimePart | None:
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
    (see :mod:`guard.mail.limits`), and the clock is read between the stages; after
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
            defects=(" ".join(note.split())[:DEFECT_CHARS],),
            unchecked=("message could not be parsed",),
        )


def _parse(raw: bytes, deadline: float) -> Message:
    data = _as_bytes(raw)
    size = len(data)
    defects = Defects(deadline)
    mail: Mail | None = None
    root: MimePart | None
    data = limit_mime_depth(cap_headers(data, defects), defects)
    try:
        mail = read_mail(data, defects)
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
    headers = first_headers(root)
    parsed: dict[str, Any] = mail.addresses if mail is not None else {}
    get = headers.get

    from_ = address_header(parsed.get("from"), get("from"), defects, "From")
    sender = parse_addresses(headers["sender"]) if "sender" in headers else ()

    date = None
    if "date" in headers:
        date = message_date(mail.date if mail is not None else None, headers["date"], defects)

    references_raw = header_str(get("references", ""))
    references = tuple(MSG_ID_RE.findall(references_raw)) or tuple(references_raw.split())

    main = _Body()
    entries: list[Attachment | _Body] = []
    reader = _Reader(defects)
    if mail is not None:
        _walk(root, headers, main, entries, defects)
        reader.read(main)
        for entry in entries:
            if isinstance(entry, _Body):
                reader.read(entry)
        if not main.plain and not main.html and mail.categories & RECOVERED_DEFECTS:
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
        reply_to=address_header(parsed.get("reply-to"), get("reply-to"), defects, "Reply-To"),
        return_path=return_path(get("return-path")),
        sender=sender[0] if sender else None,
        to=address_header(parsed.get("to"), get("to"), defects, "To"),
        cc=address_header(parsed.get("cc"), get("cc"), defects, "Cc"),
        subject=_cap(header_text(get("subject", "")), "subject", defects),
        date=date,
        message_id=header_str(get("message-id", ""))[:MAX_TEXT_CHARS],
        in_reply_to=header_str(get("in-reply-to", ""))[:MAX_TEXT_CHARS],
        references=references[:MAX_LINKS],
        text=_join_parts(main.plain, "text", defects),
        html_text=_join_parts(main.html, "html_text", defects),
        links=tuple(links),
        attachments=attachments,
        auth=auth_results(get("authentication-results")),
        list_id=header_str(get("list-id", ""))[:MAX_TEXT_CHARS],
        auto_submitted=header_str(get("auto-submitted", "")).lower()[:MAX_TEXT_CHARS],
        precedence=header_str(get("precedence", "")).lower()[:MAX_TEXT_CHARS],
        list_unsubscribe=header_str(get("list-unsubscribe", ""))[:MAX_TEXT_CHARS],
        defects=tuple(defects.items),
        size=size,
        unchecked=tuple(defects.unchecked),
    )
