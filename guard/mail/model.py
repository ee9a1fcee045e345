"""The message model: what one message says, as plain immutable data.

``Message`` and its parts (``Address``, ``Link``, ``Attachment``, ``AuthResults``) are
what every other part of the guard reads (policy, store, digest, export); they are built
only by :func:`guard.mail.parse_message`. No parsing here: dataclasses and two
properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


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
