"""Raw RFC 5322 bytes to an immutable :class:`Message`, built with mail-parser.

This module is the only place that looks at MIME. Everything downstream (the policy
engine, the store, the digest) works on the plain data here. Parsing never raises:
whatever could not be read is reported in ``Message.defects`` and the rest is kept.
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


def parse_message(raw: bytes) -> Message:  # pragma: no cover - replaced below
    raise NotImplementedError
