"""How a label is written on the server: one small class per backend, behind one interface.

A :class:`LabelBackend` spells a logical :class:`~guard.mailbox.labels.Label` for its kind
of server label and adds it to messages:

- :class:`GmailLabels`: a Gmail label (``X-GM-LABELS``), ``gmail:Guard/Scam``;
- :class:`KeywordLabels`: an IMAP keyword (``UID STORE +FLAGS``), ``keyword:$GuardScam``;
- :class:`FolderLabels`: a copy of the message in a label folder (``UID COPY``),
  ``folder:Guard/Scam`` with the server's hierarchy delimiter. A copy is a separate
  message: the store writes it ahead before it is made, and it outlives a UIDVALIDITY
  change of the folder the original sits in (:attr:`LabelBackend.copies`).

The spellings (``kind:value``) are what the store keeps per message, so a label already
written in one form is never written again and a mode change writes only the new form:
they are persisted and must never change.

A labels mode (``labels.mode`` as resolved against the server) is a :class:`LabelScheme`:
the backends it writes through, chosen once when the mode is known.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from guard.mailbox.labels import Label

MODES = ("gmail", "keywords", "folders", "keywords+folders")


class LabelWriter(Protocol):
    """What a backend needs from the mailbox to add its labels."""

    def add_keywords(self, uids: Sequence[int], keywords: Sequence[str]) -> None: ...

    def add_gmail_labels(self, uids: Sequence[int], labels: Sequence[str]) -> None: ...

    def ensure_folder(self, folder: str) -> None: ...

    def copy(self, uids: Sequence[int], folder: str) -> None: ...


class LabelBackend(ABC):
    """One kind of server label: how a label is spelled and added (never removed)."""

    kind: ClassVar[str]
    """The tag of this backend's spellings in the store (``kind:value``)."""
    copies: ClassVar[bool] = False
    """True when a label is a copy of the message: a message of its own, written ahead in
    the store (a copy cannot be added twice harmlessly) and kept across a UIDVALIDITY
    change of the original's folder."""

    def __init__(self, prefix: str, delimiter: str = "/") -> None:
        self.prefix = prefix
        self.delimiter = delimiter

    @abstractmethod
    def value(self, label: Label) -> str:
        """The server's name for ``label`` (a keyword, a Gmail label, a folder path)."""

    def spell(self, label: Label) -> str:
        return f"{self.kind}:{self.value(label)}"

    def prepare(self, mailbox: LabelWriter, value: str) -> None:  # noqa: B027 - optional hook
        """Whatever must exist on the server before ``value`` can be added (nothing by
        default)."""

    @abstractmethod
    def add(self, mailbox: LabelWriter, uids: Sequence[int], value: str) -> None:
        """Add the label ``value`` to the messages ``uids`` of the selected folder."""


class GmailLabels(LabelBackend):
    kind = "gmail"

    def value(self, label: Label) -> str:
        return label.path(self.prefix, "/")  # Gmail labels always nest with "/"

    def add(self, mailbox: LabelWriter, uids: Sequence[int], value: str) -> None:
        mailbox.add_gmail_labels(uids, [value])


class KeywordLabels(LabelBackend):
    kind = "keyword"

    def value(self, label: Label) -> str:
        return label.keyword(self.prefix)

    def add(self, mailbox: LabelWriter, uids: Sequence[int], value: str) -> None:
        mailbox.add_keywords(uids, [value])


class FolderLabels(LabelBackend):
    kind = "folder"
    copies = True

    def value(self, label: Label) -> str:
        return label.path(self.prefix, self.delimiter)

    def prepare(self, mailbox: LabelWriter, value: str) -> None:
        mailbox.ensure_folder(value)

    def add(self, mailbox: LabelWriter, uids: Sequence[int], value: str) -> None:
        mailbox.copy(uids, value)


BACKENDS: dict[str, type[LabelBackend]] = {
    cls.kind: cls for cls in (GmailLabels, KeywordLabels, FolderLabels)
}
_MODE_BACKENDS: dict[str, tuple[type[LabelBackend], ...]] = {
    "gmail": (GmailLabels,),
    "keywords": (KeywordLabels,),
    "folders": (FolderLabels,),
    "keywords+folders": (KeywordLabels, FolderLabels),
}


def kind_of(spelling: str) -> str:
    return spelling.partition(":")[0]


def is_copy(spelling: str) -> bool:
    """Whether a stored spelling is a label-folder copy (a message of its own)."""
    backend = BACKENDS.get(kind_of(spelling))
    return backend is not None and backend.copies


@dataclass(frozen=True)
class LabelScheme:
    """A labels mode: the backends every label is written through."""

    mode: str
    backends: tuple[LabelBackend, ...]

    @classmethod
    def for_mode(cls, mode: str, prefix: str, delimiter: str = "/") -> LabelScheme:
        return cls(mode, tuple(backend(prefix, delimiter) for backend in _MODE_BACKENDS[mode]))

    def spell(self, label: Label) -> list[str]:
        """The spellings of ``label``, one per backend, in the scheme's order."""
        return [backend.spell(label) for backend in self.backends]

    def spellings(self, labels: Iterable[Label]) -> set[str]:
        return {spelling for label in labels for spelling in self.spell(label)}

    def backend(self, spelling: str) -> tuple[LabelBackend, str]:
        """The backend that writes ``spelling``, and the value it writes."""
        kind, _, value = spelling.partition(":")
        for backend in self.backends:
            if backend.kind == kind:
                return backend, value
        first = self.backends[0]
        return BACKENDS[kind](first.prefix, first.delimiter), value


# -- choosing the mode ----------------------------------------------------------------------


def fixed_mode(configured: str, is_gmail: bool) -> str | None:
    """The backend when the server's flags do not matter ("gmail", "folders"), else None."""
    if configured == "gmail" or (configured == "auto" and is_gmail):
        return "gmail"
    if configured == "folders":
        return "folders"
    return None


def keyword_mode(configured: str, keywords_allowed: bool) -> str:
    """The backend for "auto"/"keywords" once PERMANENTFLAGS is known: keywords (plus label
    folders under "auto") when custom keywords are allowed, label folders otherwise."""
    if not keywords_allowed:
        return "folders"
    return "keywords" if configured == "keywords" else "keywords+folders"


def mode_fits(known: str, configured: str) -> bool:
    """Whether a mode found by an earlier scan can stand for ``configured`` now."""
    if configured == "auto":
        return known in ("keywords+folders", "folders", "gmail")
    if configured == "keywords":
        return known in ("keywords", "folders")
    return known == configured
