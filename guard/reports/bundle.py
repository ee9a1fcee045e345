"""The evidence bundle as a file: its layout, the names in it, and writing it safely.

A bundle is a zip of ``messages/NNN-YYYY-MM-DD-subject.eml`` (the originals),
``timeline.html``/``timeline.txt``, ``README.txt``, ``MANIFEST.json`` and
``MANIFEST.json.sha256`` (see :mod:`guard.reports.export`). :class:`AtomicZip` writes it
to a private temporary file and moves it into place only when complete; the manifest is
ASCII JSON and the sums file is in the format ``sha256sum -c`` reads. What goes into a
bundle is :mod:`guard.reports.export`; checking one is :mod:`guard.reports.verify`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import unicodedata
import zipfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from guard import store as st
from guard.errors import GuardError, Kind
from guard.mailbox.threads import strip_reply_prefixes

__all__ = [
    "FORMAT",
    "MANIFEST",
    "MANIFEST_SUMS",
    "MESSAGES_DIR",
    "README",
    "TIMELINE_HTML",
    "TIMELINE_TXT",
    "AtomicZip",
    "ExportError",
    "manifest_json",
    "message_file_name",
    "sha256_hex",
    "sums_file",
]

FORMAT = "inbox-guard-evidence/1"
MANIFEST = "MANIFEST.json"
MANIFEST_SUMS = "MANIFEST.json.sha256"
README = "README.txt"
TIMELINE_HTML = "timeline.html"
TIMELINE_TXT = "timeline.txt"
MESSAGES_DIR = "messages"

_FILE_MODE = 0o100600  # regular file, rw for the owner only (zip "external attributes")


class ExportError(GuardError):
    """The bundle cannot be written (nothing was left behind); one line saying why."""

    kind = Kind.OUTPUT


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- names


def _slug(subject: str, limit: int = 40) -> str:
    base, _reply = strip_reply_prefixes(subject)
    ascii_text = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "no-subject"


def message_file_name(number: int, width: int, row: st.StoredMessage) -> str:
    when = row.date or row.internal_date
    day = when.strftime("%Y-%m-%d") if when is not None else "undated"
    return f"{MESSAGES_DIR}/{number:0{width}d}-{day}-{_slug(row.subject)}.eml"


# --------------------------------------------------------------------------- writing the zip


class AtomicZip:
    """A zip written to a private temporary file beside ``out`` and moved into place only
    when complete: a crash or an error never leaves a partial bundle under ``out``.
    The file and every entry in it are 0600; entries carry one fixed time."""

    def __init__(self, out: Path, when: datetime, overwrite: bool) -> None:
        self.out = out
        self.overwrite = overwrite
        self.date_time = (when.year, when.month, when.day, when.hour, when.minute, when.second)
        self.names: list[str] = []
        directory = out.parent if str(out.parent) else Path(".")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=directory)
        except OSError as exc:
            raise ExportError(f"cannot write in '{directory}': {exc.strerror or exc}") from None
        self.tmp = Path(tmp)
        os.fchmod(fd, 0o600)
        self.fh: IO[bytes] = os.fdopen(fd, "w+b")
        self.zip = zipfile.ZipFile(self.fh, "w", compression=zipfile.ZIP_DEFLATED)

    def add(self, name: str, data: bytes) -> tuple[str, int]:
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3  # Unix, so that the mode below is honoured
        info.external_attr = _FILE_MODE << 16
        self.zip.writestr(info, data)
        self.names.append(name)
        return sha256_hex(data), len(data)

    def commit(self) -> None:
        self.zip.close()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        if self.overwrite:
            os.replace(self.tmp, self.out)
        else:
            try:
                os.link(self.tmp, self.out)  # atomic, and never replaces a file
            except FileExistsError:
                raise ExportError(
                    f"'{self.out}' already exists (use --force to replace it)"
                ) from None
            except OSError:  # a file system without hard links
                if self.out.exists():
                    raise ExportError(
                        f"'{self.out}' already exists (use --force to replace it)"
                    ) from None
                os.replace(self.tmp, self.out)
            self.tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.out.parent if str(self.out.parent) else ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.zip.close()
        with contextlib.suppress(Exception):
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


def manifest_json(manifest: dict[str, Any]) -> bytes:
    # ASCII only: any byte of attacker text is spelled \uXXXX, so what an editor shows is
    # what is hashed, with no bidi or invisible characters.
    return (json.dumps(manifest, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def sums_file(manifest_sha: str, files: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"{manifest_sha}  {MANIFEST}"] + [f"{sha}  {name}" for name, sha in files]
    return ("\n".join(lines) + "\n").encode("ascii")
