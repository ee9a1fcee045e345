"""The user's mailbox on the IMAP server: connecting, reading folders, setting labels.

Owns the IMAP connection, the label backends (Gmail labels, IMAP keywords, label folders)
and grouping messages into threads. The only part of ``guard`` that talks IMAP.

May import ``guard.errors``, ``guard.config``, ``guard.mail``, ``guard.policy`` and
``guard.store``; never ``guard.reports``, ``guard.service`` or ``guard.cli``.
"""

from guard.mailbox.imap import (
    DRAFTS,
    SENT,
    Connection,
    Fetched,
    FolderStatus,
    ImapError,
    Selected,
)
from guard.mailbox.protocol import Mailbox
from guard.mailbox.settings import ServerSettings, server_settings

__all__ = [
    "DRAFTS",
    "SENT",
    "Connection",
    "Fetched",
    "FolderStatus",
    "ImapError",
    "Mailbox",
    "Selected",
    "ServerSettings",
    "server_settings",
]
