"""Where ``inbox-guard check`` and ``eval`` get their messages from: files, directories, mboxes.

A PATH is one of

* a directory: searched recursively (in name order) for ``*.eml`` files and Maildir
  message files (regular files inside ``cur/`` and ``new/``; a Maildir's ``tmp/`` is
  skipped). Other files are ignored, and a directory without messages yields nothing;
* an mbox file: the extension ``.mbox``/``.mbx``, or a file whose first line starts with
  ``From `` and which has at least one more mbox separator line (``From <sender> <date>``).
  Each message is a :class:`Source` named ``path#N`` (N from 1), without its ``From_`` line;
* any other regular file: one message (an ``.eml`` with or without a leading ``From_``
  envelope line), its bytes unchanged;
* ``-``: standard input, read like a file.

Everything is a generator: a directory is walked lazily and an mbox is split while it is
read, so memory holds one message (plus the names in one directory) at a time.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from guard.errors import GuardError, Kind

__all__ = ["Source", "SourceError", "iter_sources", "read_message_file"]

MBOX_EXTENSIONS = (".mbox", ".mbx")
STDIN_NAME = "-"

# An mbox separator line as the usual writers produce it (qmail, Postfix, mutt, Thunderbird,
# Python's mailbox, Google Takeout): "From <sender> <weekday> <month> <day> <hh:mm>..."
# (the sender may contain spaces in old spam: "From x@[10.0.0.1] [ufa]  Sun Aug  5 ...").
# Matching the date keeps prose lines such as "From slots to live tables, ..." in a body
# (seen unescaped in real mail) from being taken for separators.
_SEPARATOR = re.compile(
    rb"From \S.*?\s(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s+"
    rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+\d{1,2}\s+\d{1,2}:\d\d"
)


@dataclass(frozen=True, slots=True)
class Source:
    """One message to check: ``name`` is what the user sees, ``raw`` the message bytes."""

    name: str
    raw: bytes


class SourceError(GuardError, OSError):
    """A path could not be read. ``str()`` is one line naming the path."""

    kind = Kind.INPUT

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read '{path}': {reason}")
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0])


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def iter_sources(
    paths: Iterable[str | os.PathLike[str]],
    on_error: Callable[[SourceError], None] | None = None,
) -> Iterator[Source]:
    """Yield every message found under ``paths``, in order.

    An unreadable path (missing, permission denied, unreadable file inside a directory)
    raises :class:`SourceError`; when ``on_error`` is given it is called instead and the
    iteration goes on with the next file.
    """
    for path in paths:
        name = os.fspath(path)
        try:
            if name == STDIN_NAME:
                yield from _split_stream(sys.stdin.buffer, name, force_mbox=False)
            elif os.path.isdir(name):
                yield from _walk_directory(name, on_error)
            else:
                yield from _read_file(name)
        except SourceError as exc:
            if on_error is None:
                raise
            on_error(exc)


def read_message_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of one message file, or :class:`SourceError` naming it."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise SourceError(name, _reason(exc)) from None


def _read_file(name: str) -> Iterator[Source]:
    try:
        fh = open(name, "rb")  # noqa: SIM115 - closed below, the generator may pause
    except OSError as exc:
        raise SourceError(name, _reason(exc)) from None
    with fh:
        force_mbox = name.lower().endswith(MBOX_EXTENSIONS)
        try:
            yield from _split_stream(fh, name, force_mbox=force_mbox)
        except OSError as exc:  # e.g. EISDIR, EIO while reading
            raise SourceError(name, _reason(exc)) from None


def _is_message_file(dir_name: str, entry_name: str) -> bool:
    if entry_name.startswith("."):
        return False
    return entry_name.lower().endswith(".eml") or dir_name in ("cur", "new")


def _walk_directory(top: str, on_error: Callable[[SourceError], None] | None) -> Iterator[Source]:
    """Depth-first in name order, so the output is the same on every run and machine."""
    try:
        with os.scandir(top) as it:
            entries = sorted(
                ((e.name, e.is_dir(follow_symlinks=False), e.is_file()) for e in it),
                key=lambda e: e[0],
            )
    except OSError as exc:
        raise SourceError(top, _reason(exc)) from None
    names = {entry_name for entry_name, _, _ in entries}
    is_maildir = "cur" in names or "new" in names
    dir_name = os.path.basename(os.path.normpath(top))
    for entry_name, is_dir, is_file in entries:
        path = os.path.join(top, entry_name)
        try:
            if is_dir:
                if is_maildir and entry_name == "tmp":
                    continue  # messages being delivered, possibly incomplete
                yield from _walk_directory(path, on_error)
            elif is_file and _is_message_file(dir_name, entry_name):
                yield Source(path, read_message_file(path))
        except SourceError as exc:
            if on_error is None:
                raise
            on_error(exc)


def _split_stream(fh: BinaryIO, name: str, *, force_mbox: bool) -> Iterator[Source]:
    """One message, or the messages of an mbox, from an open binary stream."""
    first = fh.readline()
    is_from = first.startswith(b"From ")
    if not force_mbox and not is_from:
        yield Source(name, first + fh.read())
        return

    # mbox, or a single message with a From_ envelope line: that is only known at the
    # second separator, so message 1 is held until then (or until the end of the file).
    current: list[bytes] = [] if is_from else [first]  # without the From_ line
    opened = is_from  # the current message began with a From_ line
    count = 0
    for line in fh:
        if _SEPARATOR.match(line):
            if opened or _has_content(current):
                count += 1
                yield Source(f"{name}#{count}", _join_message(current))
            current, opened = [], True
        else:
            current.append(line)
    if count == 0 and not force_mbox:
        yield Source(name, first + b"".join(current))
    elif opened or _has_content(current):
        yield Source(f"{name}#{count + 1}", _join_message(current))


def _has_content(lines: list[bytes]) -> bool:
    return any(line.strip() for line in lines)


def _join_message(lines: list[bytes]) -> bytes:
    """The message bytes, less the blank line an mbox writer puts before the next From_."""
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]
    return b"".join(lines)
