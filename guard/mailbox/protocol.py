"""The ``Mailbox`` interface: what the scan cycle (and reply drafts) need from a mailbox.

:class:`~guard.mailbox.imap.Connection` is the real one, over IMAP;
:class:`~guard.mailbox.memory.MemoryMailbox` keeps folders in memory, so that the scan
cycle's logic (ordering, crash points, thread propagation, dry runs) can be tested without
a server. Anything written against this interface must keep to what both do: labels are
only added, never removed; nothing is deleted, expunged or moved; failures are raised as
:class:`~guard.mailbox.imap.ImapError`.
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
