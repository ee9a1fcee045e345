"""The ``Mailbox`` interface: what the scan cycle (and reply drafts) need from a mailbox.

:class:`~guard.mailbox.imap.Connection` is the real one, over IMAP;
:class:`~guard.mailbox.memory.MemoryMailbox` keeps folders in memory, so that the scan
cycle's logic (ordering, crash points, thread propagation, dry runs) can be tested without
a server. Anything written against this interface must keep to what both do: the scan only
adds labels; removing one, moving a message back and removing one message are the user's
corrections (``guard.service.feedback``, see ``guard.mailbox.corrections``); failures are
raised as :class:`~guard.mailbox.imap.ImapError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from guard.mailbox.imap import Fetched, FolderStatus, Selected
from guard.mailbox.label_backends import LabelWriter


class Mailbox(LabelWriter, Protocol):
    """One open session with a mailbox (see :class:`~guard.mailbox.imap.Connection` for
    what each call means)."""

    delimiter: str  # the folder hierarchy delimiter
    commands: int  # commands sent so far (summaries, benchmarks)
    fetch_commands: int  # of which message FETCHes

    @property
    def is_gmail(self) -> bool: ...

    @property
    def is_open(self) -> bool: ...

    def open(self) -> Mailbox: ...

    def close(self) -> None: ...

    def cut(self) -> None:
        """Shut the session down at once (from another thread), without a goodbye."""

    def special_folder(self, flag: bytes) -> str | None: ...

    def folder_exists(self, folder: str) -> bool: ...

    def status(self, folder: str) -> FolderStatus: ...

    def select(self, folder: str, readonly: bool) -> Selected: ...

    def uids_after(self, last_uid: int) -> list[int]: ...

    def fetch_groups(
        self, uids: Sequence[int], max_bytes: int, budget: int
    ) -> Iterator[list[Fetched]]: ...

    def append(self, folder: str, raw: bytes, flags: Sequence[str]) -> None: ...

    def find_by_message_id(self, folder: str, message_id: str) -> bool: ...

    # -- the user's corrections (guard.mailbox.corrections) ---------------------------

    @property
    def can_expunge_one(self) -> bool: ...

    def flags_of(
        self, uids: Sequence[int], changed_since: int | None = None
    ) -> dict[int, frozenset[str]]: ...

    def gmail_labels_of(self, uids: Sequence[int]) -> dict[int, frozenset[str]]: ...

    def search_gmail_label(self, label: str) -> list[int]: ...

    def existing_uids(self, uids: Sequence[int]) -> set[int]: ...

    def uids_from(self, first_uid: int) -> list[int]: ...

    def uids_with_message_id(self, message_id: str) -> list[int]: ...

    def remove_keywords(self, uids: Sequence[int], keywords: Sequence[str]) -> None: ...

    def remove_gmail_labels(self, uids: Sequence[int], labels: Sequence[str]) -> None: ...

    def move(self, uid: int, folder: str) -> None: ...

    def expunge_one(self, uid: int) -> None: ...
