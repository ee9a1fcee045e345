"""What the feedback loop needs from an IMAP session, beyond what a scan does.

The scan only adds; the user's corrections (``guard.service.feedback``) are the one place
the guard takes something away, and only what the user asked for or what it wrote itself:

- reading a message's flags and Gmail labels (to see guard keywords the user removed);
- removing a guard keyword or Gmail label it had added (a thread marked safe);
- putting a message the user dropped into a feedback folder back where it came from
  (``UID MOVE``; without MOVE, ``UID COPY`` then ``UID EXPUNGE`` of that one UID);
- removing one message from a folder (a copy in a feedback folder once recorded, or the
  guard's own copy in a label folder): ``\\Deleted`` on that UID and ``UID EXPUNGE`` of it
  alone (UIDPLUS), never a plain EXPUNGE, which would also remove whatever the user had
  marked deleted.

A mixin of :class:`~guard.mailbox.imap.Connection`, kept apart so the connection class
stays readable; every call goes through ``Connection._call`` (one-line ImapError).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from imapclient import IMAPClient

from guard.mail import msgid
from guard.mailbox.errors import ImapError


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Corrections:
    """Flag reading, label removal and put-back for :class:`Connection`."""

    client: IMAPClient | None
    capabilities: frozenset[str]
    _call: Callable[..., Any]

    @property
    def can_expunge_one(self) -> bool:
        """Whether one message can be removed without touching others (UIDPLUS)."""
        return "UIDPLUS" in self.capabilities

    def flags_of(
        self, uids: Sequence[int], changed_since: int | None = None
    ) -> dict[int, frozenset[str]]:
        """The flags of ``uids`` in the selected folder (only those changed since the
        mod-sequence ``changed_since`` when given: CONDSTORE)."""
        assert self.client is not None
        if not uids:
            return {}
        modifiers = [f"CHANGEDSINCE {changed_since}"] if changed_since is not None else None
        got = self._call(
            "UID FETCH FLAGS", self.client.fetch, list(uids), [b"FLAGS"], modifiers=modifiers
        )
        return {
            int(uid): frozenset(_text(f) for f in item.get(b"FLAGS", ()))
            for uid, item in got.items()
        }

    def gmail_labels_of(self, uids: Sequence[int]) -> dict[int, frozenset[str]]:
        """The Gmail labels of ``uids`` in the selected folder."""
        assert self.client is not None
        if not uids:
            return {}
        got = self._call("UID FETCH X-GM-LABELS", self.client.get_gmail_labels, list(uids))
        return {int(uid): frozenset(_text(x) for x in labels) for uid, labels in got.items()}

    def search_gmail_label(self, label: str) -> list[int]:
        """UIDs of the selected folder's messages that carry the Gmail label ``label``."""
        assert self.client is not None
        found = self._call("UID SEARCH X-GM-LABELS", self.client.search, ["X-GM-LABELS", label])
        return sorted(int(u) for u in found)

    def existing_uids(self, uids: Sequence[int]) -> set[int]:
        """Which of ``uids`` are still in the selected folder."""
        assert self.client is not None
        if not uids:
            return set()
        spec = ",".join(str(u) for u in sorted(set(uids)))
        found = self._call("UID SEARCH", self.client.search, ["UID", spec])
        return {int(u) for u in found} & set(uids)

    def uids_from(self, first_uid: int) -> list[int]:
        """UIDs of the selected folder from ``first_uid`` on."""
        assert self.client is not None
        found = self._call("UID SEARCH", self.client.search, ["UID", f"{first_uid}:*"])
        return sorted(int(u) for u in found if int(u) >= first_uid)

    def uids_with_message_id(self, message_id: str) -> list[int]:
        """UIDs in the selected folder whose Message-ID is ``message_id`` (none when it is
        not a strict ``<local@domain>`` token: a sender wrote it)."""
        assert self.client is not None
        token = msgid.parse_one(message_id)
        if token is None:
            return []
        found = self._call("UID SEARCH", self.client.search, ["HEADER", "Message-ID", token])
        return sorted(int(u) for u in found)

    def remove_keywords(self, uids: Sequence[int], keywords: Sequence[str]) -> None:
        assert self.client is not None
        if uids and keywords:
            self._call(
                "UID STORE -FLAGS",
                self.client.remove_flags,
                list(uids),
                [k.encode() for k in keywords],
                silent=True,
            )

    def remove_gmail_labels(self, uids: Sequence[int], labels: Sequence[str]) -> None:
        assert self.client is not None
        if uids and labels:
            self._call(
                "UID STORE -X-GM-LABELS",
                self.client.remove_gmail_labels,
                list(uids),
                list(labels),
                silent=False,
            )

    def move(self, uid: int, folder: str) -> None:
        """Move one message of the selected folder to ``folder`` (UID MOVE, atomic; else
        UID COPY and then the UID EXPUNGE of that message alone)."""
        assert self.client is not None
        if "MOVE" in self.capabilities:
            self._call(f"UID MOVE to {folder}", self.client.move, [uid], folder)
            return
        if not self.can_expunge_one:
            raise ImapError(
                "protocol", "the server has neither MOVE nor UIDPLUS: cannot put a message back"
            )
        self._call(f"UID COPY to {folder}", self.client.copy, [uid], folder)
        self.expunge_one(uid)

    def expunge_one(self, uid: int) -> None:
        """Remove one message of the selected folder (``\\Deleted``, then UID EXPUNGE of
        that UID alone)."""
        assert self.client is not None
        if not self.can_expunge_one:
            raise ImapError("protocol", "the server lacks UIDPLUS: cannot remove one message alone")
        self._call("UID STORE +FLAGS", self.client.add_flags, [uid], [b"\\Deleted"], silent=True)
        self._call("UID EXPUNGE", self.client.uid_expunge, [uid])
