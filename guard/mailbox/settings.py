"""How to reach an account's mailbox: the IMAP connection settings and the mailbox's identity.

Owns turning an ``[[account]]``'s ``[imap]`` section into :class:`ServerSettings` (what a
:class:`~guard.mailbox.imap.Connection` needs), so that export, doctor and the daemon can
connect without going through the scan. Secrets are not read here: the settings carry
callables that read them only when logging in.

May import ``guard.config``; never ``guard.reports``, ``guard.service`` or ``guard.cli``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from guard.config import Config


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    tls: str  # "implicit" | "starttls" | "none"
    username: str
    password: Callable[[], str] | None = None
    oauth2_token: Callable[[], str] | None = None
    ca_file: str | None = None
    timeout: float = 30.0

    @property
    def mailbox(self) -> str:
        """Which mailbox an account's UIDs belong to: ``username@host``.

        The port is left out on purpose: moving from STARTTLS on 143 to TLS on 993 reaches
        the same mailbox, whose UIDs stay valid.
        """
        return f"{self.username}@{self.host.lower().rstrip('.')}"


def server_settings(config: Config, account: str = "default") -> ServerSettings:
    """The IMAP server of ``account`` (ConfigError when there is no such account); the
    password or token is read only when logging in."""
    imap = config.account_named(account).imap
    return ServerSettings(
        host=imap.host,
        port=imap.port,
        tls=imap.tls,
        username=imap.username,
        password=None if imap.uses_oauth2 else lambda: imap.password().reveal(),
        oauth2_token=(lambda: imap.oauth2_token().reveal()) if imap.uses_oauth2 else None,
        ca_file=str(imap.ca_file) if imap.ca_file else None,
        timeout=float(imap.timeout),
    )
