"""Build test messages: plain RFC 5322 bytes with the headers threading cares about."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

_counter = itertools.count(1)
_BASE = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)

HARMLESS_BODIES = [
    "Hi, thanks for the proposal. Could you share two examples of similar dashboards?",
    "The milestone looks good. I will review the staging build tomorrow morning.",
    "Please use the brand colours from the style guide attached to the contract.",
    "Great progress this week. Let's keep the weekly call on Thursday as planned.",
]
PAYMENT_BODY = (
    "Upwork takes a big cut from both of us. I can pay you directly through PayPal "
    "so we avoid the fees, just send me your PayPal email."
)
CONTACT_BODY = "Before I hire you, add me on WhatsApp +44 7700 900123 and we talk price there."


def make(
    *,
    sender: str = "client@example.com",
    to: str = "freelancer@example.org",
    subject: str = "Project",
    body: str = "Hello",
    msgid: str | None = None,
    reply_to_msg: str | None = None,
    references: list[str] | None = None,
    date: datetime | None = None,
    attachment: tuple[str, str, bytes] | None = None,
) -> tuple[bytes, str]:
    """A message and its Message-ID; ``attachment`` is (file name, MIME type, content)."""
    n = next(_counter)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or (_BASE + timedelta(minutes=n)))
    msgid = msgid or make_msgid(idstring=f"t{n}", domain="test.example")
    msg["Message-ID"] = msgid
    if reply_to_msg:
        msg["In-Reply-To"] = reply_to_msg
        msg["References"] = " ".join([*(references or []), reply_to_msg])
    msg.set_content(body)
    if attachment:
        filename, mime_type, data = attachment
        maintype, subtype = mime_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return bytes(msg), msgid


def harmless(i: int = 0, **kw: object) -> tuple[bytes, str]:
    return make(body=HARMLESS_BODIES[i % len(HARMLESS_BODIES)], **kw)  # type: ignore[arg-type]


def risky_payment(**kw: object) -> tuple[bytes, str]:
    return make(body=PAYMENT_BODY, **kw)  # type: ignore[arg-type]


def mixed(
    n: int, risky: Callable[[int], bool], risky_subject: str, subject: str
) -> tuple[list[bytes], set[str]]:
    """``n`` messages from ``c{i}@client.example``: a payment request where ``risky(i)``
    (subject ``risky_subject.format(i)``), else harmless (``subject.format(i)``). Returns
    the messages in order and the Message-IDs of the risky ones."""
    raws: list[bytes] = []
    risky_ids: set[str] = set()
    for i in range(n):
        sender = f"c{i}@client.example"
        if risky(i):
            raw, msgid = risky_payment(subject=risky_subject.format(i), sender=sender)
            risky_ids.add(msgid)
        else:
            raw, msgid = harmless(i, subject=subject.format(i), sender=sender)
        raws.append(raw)
    return raws, risky_ids
