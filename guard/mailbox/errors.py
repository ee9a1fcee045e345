"""The one error of the mailbox package: :class:`ImapError`, a failure talking to the
server, with a one-line reason a user can act on."""

from __future__ import annotations

from guard.errors import GuardError, Kind


class ImapError(GuardError):
    """A failure talking to the server. ``kind`` is one of: dns, refused, tls, login,
    timeout, folder, protocol, network, config (the secret could not be read)."""

    def __init__(self, kind: Kind | str, message: str) -> None:
        super().__init__(message, kind=kind)
