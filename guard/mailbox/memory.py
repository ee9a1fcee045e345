"""An in-memory :class:`~guard.mailbox.protocol.Mailbox`, for testing the scan cycle.

``MemoryMailbox`` keeps folders of messages (raw bytes, flags, Gmail labels) in memory and
answers the calls of the ``Mailbox`` interface as an IMAP server would where the scan's
logic depends on it: UIDs only grow, a folder has a UIDVALIDITY, a read-only (EXAMINE)
folder refuses writes, keywords need ``\\*`` in PERMANENTFLAGS, a COPY needs its target
folder to exist, and a session that failed is closed. Messages leave a folder only by the
user's corrections (MOVE, EXPUNGE of one UID).

For tests it records every command (:attr:`log`), runs hooks before a command
(:meth:`before`, to look at the store at that moment) and fails a chosen command
(:meth:`fail_at`: before it takes effect, or after, as when a reply is lost), so that each
crash point of a scan can be reached in milliseconds. The Dovecot and Gmail-emulator
tests stay the integration tier: this is not an IMAP implementation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING

from guard.mail import msgid
from guard.mailbox.imap import (
    DRAFTS,
    SENT,
    Fetched,
    FolderStatus,
    ImapError,
    Selected,
    by_bytes,
)

if TYPE_CHECKING:
    from guard.mailbox.protocol import Mailbox

SYSTEM_FLAGS = frozenset({"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"})
WRITES = frozenset(
    {"STORE", "X-GM-LABELS", "CREATE", "COPY", "APPEND", "UNSTORE", "MOVE", "EXPUNGE"}
)
_uidvalidities = itertools.count(1_000)


@dataclass
class StoredMail:
    raw: bytes
    flags: set[str] = field(default_factory=set)
    gmail_labels: set[str] = field(default_factory=set)
    internal_date: datetime = field(default_factory=lambda: datetime.now(UTC))
    thrid: int | None = None


@dataclass
class MemoryFolder:
    uidvalidity: int = field(default_factory=lambda: next(_uidvalidities))
    uidnext: int = 1
    messages: dict[int, StoredMail] = field(default_factory=dict)

    def add(self, mail: StoredMail) -> int:
        uid = self.uidnext
        self.messages[uid] = mail
        self.uidnext += 1
        return uid


@dataclass(frozen=True)
class Command:
    """One command as the mailbox saw it: ``name`` (LIST, STATUS, SELECT, EXAMINE, SEARCH,
    FETCH, STORE, X-GM-LABELS, CREATE, COPY, APPEND), the folder it acted on (the selected
    one, or the target), the UIDs and the value (keyword, label, target folder)."""

    name: str
    folder: str = ""
    uids: tuple[int, ...] = ()
    value: str = ""


@dataclass
class _Fault:
    command: str
    remaining: int  # calls to let through first
    after: bool  # fail once the command has taken effect (its reply is lost)


class MemoryMailbox:
    """A mailbox in memory (see the module docstring). ``gmail``: it speaks X-GM-EXT-1;
    ``keywords``: custom keywords are allowed (``\\*`` in PERMANENTFLAGS); ``sent``: the
    name of the special-use ``\\Sent`` folder (None: there is none)."""

    def __init__(
        self,
        *,
        gmail: bool = False,
        keywords: bool = True,
        delimiter: str = "/",
        sent: str | None = "Sent",
        drafts: str | None = "Drafts",
    ) -> None:
        self.gmail = gmail
        self.keywords_allowed = keywords
        self.delimiter = delimiter
        self.folders: dict[str, MemoryFolder] = {"INBOX": MemoryFolder()}
        self.special: dict[bytes, str] = {}
        for flag, name in ((SENT, sent), (DRAFTS, drafts)):
            if name is not None:
                self.folders[name] = MemoryFolder()
                self.special[flag] = name
        self.selected: Selected | None = None
        self.commands = 0
        self.fetch_commands = 0
        self.log: list[Command] = []
        self.opened = 0  # sessions opened so far
        self._open = False
        self._hooks: dict[str, list[Callable[[Command], None]]] = {}
        self._faults: list[_Fault] = []

    # -- for tests -------------------------------------------------------------------

    def deliver(
        self,
        raw: bytes,
        folder: str = "INBOX",
        flags: Sequence[str] = (),
        thrid: int | None = None,
    ) -> int:
        """Put a message into ``folder`` (as mail arriving, not through a session)."""
        return self.folders[folder].add(StoredMail(raw, set(flags), thrid=thrid))

    def create(self, folder: str) -> None:
        self.folders.setdefault(folder, MemoryFolder())

    def renumber(self, folder: str) -> int:
        """Give ``folder`` a new UIDVALIDITY and number its messages again from 1 (as a
        server does when it rebuilds its index). Returns the new UIDVALIDITY."""
        old = self.folders[folder]
        new = MemoryFolder()
        for _uid, mail in sorted(old.messages.items()):
            new.add(mail)
        self.folders[folder] = new
        return new.uidvalidity

    def flags(self, folder: str = "INBOX") -> dict[int, frozenset[str]]:
        return {u: frozenset(m.flags) for u, m in self.folders[folder].messages.items()}

    def gmail_labels(self, folder: str = "INBOX") -> dict[int, frozenset[str]]:
        return {u: frozenset(m.gmail_labels) for u, m in self.folders[folder].messages.items()}

    def messages(self, folder: str = "INBOX") -> dict[int, bytes]:
        return {u: m.raw for u, m in self.folders[folder].messages.items()}

    def names(self, *commands: str) -> list[str]:
        """The names of the commands in :attr:`log` (only those in ``commands`` if given)."""
        return [c.name for c in self.log if not commands or c.name in commands]

    def before(self, command: str, hook: Callable[[Command], None]) -> None:
        """Call ``hook`` before every ``command`` takes effect."""
        self._hooks.setdefault(command, []).append(hook)

    def fail_at(self, command: str, *, skip: int = 0, after: bool = False) -> None:
        """Fail the ``skip + 1``-th ``command`` from now on, as a dropped connection: with
        ``after`` once it has taken effect (the server did it, its reply was lost). The
        session is closed by the failure."""
        self._faults.append(_Fault(command, skip, after))

    # -- the Mailbox interface ---------------------------------------------------------

    @property
    def is_gmail(self) -> bool:
        return self.gmail

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> MemoryMailbox:
        self._open = True
        self.opened += 1
        self.selected = None
        return self

    def close(self) -> None:
        self._open = False
        self.selected = None

    def cut(self) -> None:
        self.close()

    def __enter__(self) -> MemoryMailbox:
        return self if self._open else self.open()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def special_folder(self, flag: bytes) -> str | None:
        self._run(Command("LIST"))
        return self.special.get(flag)

    def folder_exists(self, folder: str) -> bool:
        self._run(Command("LIST", folder))
        return folder in self.folders

    def status(self, folder: str) -> FolderStatus:
        self._run(Command("STATUS", folder))
        box = self._folder(folder, "does not exist on the server")
        return FolderStatus(box.uidvalidity, box.uidnext, None, len(box.messages))

    def select(self, folder: str, readonly: bool) -> Selected:
        self._run(Command("EXAMINE" if readonly else "SELECT", folder))
        box = self._folder(folder, "cannot be opened")
        if readonly:
            permanent: frozenset[str] = frozenset()  # EXAMINE: no PERMANENTFLAGS
        else:
            permanent = SYSTEM_FLAGS | ({"\\*"} if self.keywords_allowed else set())
        self.selected = Selected(
            folder=folder,
            uidvalidity=box.uidvalidity,
            uidnext=box.uidnext,
            highest_modseq=None,
            exists=len(box.messages),
            permanent_flags=permanent,
            readonly=readonly,
        )
        return self.selected

    def uids_after(self, last_uid: int) -> list[int]:
        box = self._selected(Command("SEARCH", self._name()))
        return sorted(u for u in box.messages if u > last_uid)

    def fetch_groups(
        self, uids: Sequence[int], max_bytes: int, budget: int
    ) -> Iterator[list[Fetched]]:
        if not uids:
            return
        box = self._selected(Command("FETCH", self._name(), tuple(uids), "RFC822.SIZE"))
        sizes = {u: min(len(box.messages[u].raw), max_bytes) for u in uids if u in box.messages}
        for run in by_bytes([u for u in uids if u in sizes], sizes, budget):
            box = self._selected(Command("FETCH", self._name(), tuple(run), "BODY.PEEK[]"))
            self.fetch_commands += 1
            group = []
            for uid in run:
                mail = box.messages.get(uid)
                if mail is None:
                    continue
                group.append(
                    Fetched(
                        uid=uid,
                        raw=mail.raw[:max_bytes],
                        size=len(mail.raw),
                        internal_date=mail.internal_date,
                        flags=frozenset(mail.flags),
                        gm_thrid=mail.thrid if self.gmail else None,
                        truncated=len(mail.raw) > max_bytes,
                    )
                )
            yield group

    def add_keywords(self, uids: Sequence[int], keywords: Sequence[str]) -> None:
        self._add_to(
            Command("STORE", self._name(), tuple(uids), " ".join(keywords)),
            not self.keywords_allowed and "keywords are not allowed in this folder",
            lambda m: m.flags.update(keywords),
        )

    def add_gmail_labels(self, uids: Sequence[int], labels: Sequence[str]) -> None:
        self._add_to(
            Command("X-GM-LABELS", self._name(), tuple(uids), " ".join(labels)),
            not self.gmail and "not a Gmail server",
            lambda m: m.gmail_labels.update(labels),
        )

    def ensure_folder(self, folder: str) -> None:
        if self.folder_exists(folder):
            return
        command = Command("CREATE", folder)
        self._run(command)
        self._effect(command, lambda: self.create(folder))

    def copy(self, uids: Sequence[int], folder: str) -> None:
        command = Command("COPY", folder, tuple(uids), folder)
        box = self._selected(command, write=True)
        target = self._folder(folder, "cannot be copied to ([TRYCREATE])")

        def copy() -> None:
            for uid in sorted(uids):
                mail = box.messages.get(uid)
                if mail is not None:
                    target.add(StoredMail(mail.raw, set(mail.flags), set(mail.gmail_labels)))

        self._effect(command, copy)

    def append(self, folder: str, raw: bytes, flags: Sequence[str]) -> None:
        command = Command("APPEND", folder, (), " ".join(flags))
        self._run(command)
        target = self._folder(folder, "cannot be appended to ([TRYCREATE])")
        self._effect(command, lambda: target.add(StoredMail(raw, set(flags))))

    def find_by_message_id(self, folder: str, message_id: str) -> bool:
        token = msgid.parse_one(message_id)
        if token is None:
            return False
        self.select(folder, readonly=True)
        box = self._selected(Command("SEARCH", folder, (), f"Message-ID {token}"))
        parser = BytesHeaderParser()
        return any(
            token.lower() in str(parser.parsebytes(m.raw).get("Message-ID", "")).lower()
            for m in box.messages.values()
        )

    # -- the user's corrections ----------------------------------------------------------

    @property
    def can_expunge_one(self) -> bool:
        return True

    def flags_of(
        self, uids: Sequence[int], changed_since: int | None = None
    ) -> dict[int, frozenset[str]]:
        box = self._selected(Command("FETCH", self._name(), tuple(uids), "FLAGS"))
        return {u: frozenset(box.messages[u].flags) for u in uids if u in box.messages}

    def gmail_labels_of(self, uids: Sequence[int]) -> dict[int, frozenset[str]]:
        box = self._selected(Command("FETCH", self._name(), tuple(uids), "X-GM-LABELS"))
        return {u: frozenset(box.messages[u].gmail_labels) for u in uids if u in box.messages}

    def search_gmail_label(self, label: str) -> list[int]:
        box = self._selected(Command("SEARCH", self._name(), (), f"X-GM-LABELS {label}"))
        return sorted(u for u, m in box.messages.items() if label in m.gmail_labels)

    def existing_uids(self, uids: Sequence[int]) -> set[int]:
        box = self._selected(Command("SEARCH", self._name(), tuple(uids), "UID"))
        return {u for u in uids if u in box.messages}

    def uids_from(self, first_uid: int) -> list[int]:
        box = self._selected(Command("SEARCH", self._name(), (), f"UID {first_uid}:*"))
        return sorted(u for u in box.messages if u >= first_uid)

    def uids_with_message_id(self, message_id: str) -> list[int]:
        token = msgid.parse_one(message_id)
        if token is None:
            return []
        box = self._selected(Command("SEARCH", self._name(), (), f"Message-ID {token}"))
        parser = BytesHeaderParser()
        return sorted(
            u
            for u, m in box.messages.items()
            if token.lower() in str(parser.parsebytes(m.raw).get("Message-ID", "")).lower()
        )

    def remove_keywords(self, uids: Sequence[int], keywords: Sequence[str]) -> None:
        self._add_to(
            Command("UNSTORE", self._name(), tuple(uids), " ".join(keywords)),
            False,
            lambda m: m.flags.difference_update(keywords),
        )

    def remove_gmail_labels(self, uids: Sequence[int], labels: Sequence[str]) -> None:
        self._add_to(
            Command("UNSTORE", self._name(), tuple(uids), " ".join(labels)),
            not self.gmail and "not a Gmail server",
            lambda m: m.gmail_labels.difference_update(labels),
        )

    def move(self, uid: int, folder: str) -> None:
        command = Command("MOVE", folder, (uid,), folder)
        box = self._selected(command, write=True)
        target = self._folder(folder, "cannot be moved to ([TRYCREATE])")

        def move() -> None:
            mail = box.messages.pop(uid, None)
            if mail is not None:
                target.add(mail)

        self._effect(command, move)

    def expunge_one(self, uid: int) -> None:
        command = Command("EXPUNGE", self._name(), (uid,))
        box = self._selected(command, write=True)
        self._effect(command, lambda: box.messages.pop(uid, None))

    # -- the machinery -------------------------------------------------------------------

    def _name(self) -> str:
        return self.selected.folder if self.selected is not None else ""

    def _folder(self, folder: str, problem: str) -> MemoryFolder:
        box = self.folders.get(folder)
        if box is None:
            raise ImapError("folder", f"folder {folder!r} {problem}")
        return box

    def _run(self, command: Command) -> None:
        """Count and log ``command``, run its hooks, and fail it if asked (before)."""
        if not self._open:
            raise ImapError("network", "not connected to the memory mailbox")
        self.commands += 1
        self.log.append(command)
        for hook in self._hooks.get(command.name, []):
            hook(command)
        self._maybe_fail(command, after=False)

    def _effect(self, command: Command, apply: Callable[[], object]) -> None:
        apply()
        self._maybe_fail(command, after=True)

    def _maybe_fail(self, command: Command, after: bool) -> None:
        for fault in self._faults:
            if fault.command != command.name or fault.after != after:
                continue
            if fault.remaining > 0:
                fault.remaining -= 1
                continue
            self._faults.remove(fault)
            self.close()
            raise ImapError("network", f"connection to the memory mailbox lost at {command.name}")

    def _selected(self, command: Command, write: bool = False) -> MemoryFolder:
        self._run(command)
        if self.selected is None:
            raise ImapError("protocol", f"{command.name}: no folder selected")
        if write and self.selected.readonly:
            raise ImapError("protocol", f"{command.name}: the folder is read-only (EXAMINE)")
        return self.folders[self.selected.folder]

    def _add_to(
        self, command: Command, refused: str | bool, change: Callable[[StoredMail], object]
    ) -> None:
        """Apply ``change`` to the messages ``command.uids`` of the selected folder, unless
        the server refuses the command (``refused``: why)."""
        box = self._selected(command, write=True)
        if refused:
            raise ImapError("protocol", f"{command.name}: {refused}")

        def apply() -> None:
            for uid in command.uids:
                mail = box.messages.get(uid)
                if mail is not None:
                    change(mail)

        self._effect(command, apply)


if TYPE_CHECKING:
    _: type[Mailbox] = MemoryMailbox  # mypy checks that it keeps to the interface
