"""What a reply draft built from hostile mail may carry (unit and integration tests share it)."""

from __future__ import annotations

# The only header fields a draft has: no Bcc, one Content-Type, no In-Reply-To when the
# client's Message-ID was not a valid token.
DRAFT_HEADER_NAMES = sorted(
    [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "references",
        "x-inbox-guard",
        "content-type",
        "content-transfer-encoding",
        "mime-version",
    ]
)


def header_lines(raw: bytes) -> list[str]:
    """The first line of each top-level header field of a raw message."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line for line in head.split("\r\n") if line and not line[0].isspace()]


def header_names(raw: bytes) -> list[str]:
    """The lower-case names of the top-level header fields of a raw message, sorted."""
    return sorted(line.split(":", 1)[0].lower() for line in header_lines(raw))
