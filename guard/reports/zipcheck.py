"""Reading an untrusted zip in place, safely: nothing is extracted, nothing is inflated
beyond the size its headers declare.

:func:`check_entries` reports every entry an unzip tool could not write as a plain file
of one folder (links, devices, unsafe or colliding names, duplicates);
:func:`member_layouts` checks from the headers alone that every member can be read (not
encrypted, stored or deflated, both headers agreeing, no overlap, nothing past the end);
:func:`read_member` and :func:`hash_member` then inflate a member a chunk at a time.
Anything unreadable raises :class:`Unreadable`. Used by :mod:`guard.reports.verify`.
"""

from __future__ import annotations

import hashlib
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from guard.errors import GuardError, Kind

__all__ = [
    "Layout",
    "Unreadable",
    "check_entries",
    "entry_kind",
    "hash_member",
    "member_layouts",
    "read_member",
    "safe_name",
]

_CHUNK = 1024 * 1024


class Unreadable(GuardError):
    """A member that cannot be read safely: the bundle is not readable (exit 2)."""

    kind = Kind.INPUT


_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_DRIVE = re.compile(r"[A-Za-z]:")
_DEVICES = frozenset(
    {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)}
)


def _unsafe_reason(name: str) -> str | None:
    """Why ``name`` is not a plain relative path inside the bundle (None: it is one).

    Only names like those an export writes pass: "/"-separated parts of letters, digits,
    ".", "_" and "-", none starting with a dot, none a Windows device name."""
    if not name:
        return "an empty name"
    if "\x00" in name:
        return "a NUL character"
    if name.startswith(("/", "\\")):
        return "an absolute path"
    if _DRIVE.match(name):
        return "a drive letter"
    if "\\" in name:
        return "a backslash"
    parts = name.split("/")
    if ".." in parts:
        return "a '..' part"
    if any(p in ("", ".") for p in parts):
        return "an empty or '.' part"
    if any(p.startswith(".") for p in parts):
        return "a dot-file name"
    if not all(_COMPONENT.fullmatch(p) for p in parts):
        return "characters other than letters, digits, '.', '_' and '-'"
    if any(p.endswith(".") for p in parts):
        return "a part ending in a dot"
    if any(p.split(".", 1)[0].lower() in _DEVICES for p in parts):
        return "a Windows device name"
    return None


def safe_name(name: str) -> bool:
    return _unsafe_reason(name) is None


def entry_kind(info: zipfile.ZipInfo) -> str:
    """file, dir, symlink or special, from the Unix mode (when there is one) and the name."""
    fmt = stat.S_IFMT(info.external_attr >> 16)
    if fmt == stat.S_IFLNK:
        return "symlink"
    if fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
        return "special"
    if fmt == stat.S_IFDIR or info.filename.endswith("/"):
        return "dir"
    return "file"


def _fold_name(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def check_entries(infos: Sequence[zipfile.ZipInfo], problems: list[str]) -> set[str]:
    """Add to ``problems`` every entry an unzip tool could not write safely as a plain file of the
    bundle's folder: links, devices, unsafe names, duplicates, names that collide when
    letter case is ignored, a name that is both a file and a folder. Returns the names
    reported, so that they are not reported again."""
    flagged: set[str] = set()
    seen: set[str] = set()
    folded: dict[str, str] = {}
    files: dict[str, str] = {}  # folded name -> name, for plain files
    folders: set[str] = set()  # folded names of every folder some entry is in or is

    def flag(name: str, problem: str) -> None:
        problems.append(f"{name}: {problem}")
        flagged.add(name)

    for info in infos:
        name = info.filename
        kind = entry_kind(info)
        base = name[:-1] if kind == "dir" and name.endswith("/") else name
        reason = "a NUL character" if info.orig_filename != name else _unsafe_reason(base)
        if name in seen:
            flag(name, "appears more than once in the zip")
            continue
        seen.add(name)
        if kind == "symlink":
            flag(name, "a symbolic link, not a file (unpacked, it could point anywhere)")
        elif kind == "special":
            flag(name, "a device, pipe or socket entry, not a file")
        elif reason is not None:
            flag(name, f"unsafe name ({reason})")
        elif kind == "dir" and info.file_size:
            flag(name, "a folder entry with content")
        key = _fold_name(base)
        other = folded.setdefault(key, base)
        if other != base and name not in flagged:
            flag(
                name,
                f"differs from {other} only in letter case (unpacked on Windows or macOS, "
                "one would overwrite the other)",
            )
        parts = key.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if kind == "dir":
            folders.add(key)
        elif kind == "file":
            files.setdefault(key, name)
    for key, name in files.items():
        if key in folders and name not in flagged:
            flag(name, "is both a file and a folder in the zip")
    return flagged


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... name length, extra length
_ENCRYPTED = 0x1
_DATA_DESCRIPTOR = 0x8
_UTF8_NAME = 0x800
_ZIP64_SIZE = 0xFFFFFFFF


@dataclass(frozen=True)
class Layout:
    start: int  # first byte of the member's compressed data
    end: int  # first byte after it


def _layout(fh: IO[bytes], info: zipfile.ZipInfo, total: int) -> Layout:
    """Where a member's data is, after checking from its headers alone (nothing is
    decompressed) that it can be read: not encrypted, stored or deflated, and its local
    header agreeing with the central directory about its name, method and sizes."""
    name = info.filename
    if info.flag_bits & _ENCRYPTED:
        raise Unreadable(f"{name}: encrypted (an evidence bundle never is)")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise Unreadable(
            f"{name}: compressed with method {info.compress_type}, which evidence bundles "
            "never use (only stored and deflated are read)"
        )
    fh.seek(info.header_offset)
    head = fh.read(_LOCAL_HEADER.size)
    if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
        raise Unreadable(f"{name}: its local header is missing")
    _sig, _version, flags, method, _time, _date, crc, csize, usize, nlen, xlen = (
        _LOCAL_HEADER.unpack(head)
    )
    try:
        wanted = info.orig_filename.encode("utf-8" if info.flag_bits & _UTF8_NAME else "cp437")
    except UnicodeEncodeError:
        wanted = b""
    if fh.read(nlen) != wanted:
        raise Unreadable(f"{name}: its local header names another file")
    if flags & _ENCRYPTED:
        raise Unreadable(f"{name}: encrypted (an evidence bundle never is)")
    if method != info.compress_type:
        raise Unreadable(f"{name}: its two zip headers disagree on its compression")
    sizes_given = not flags & _DATA_DESCRIPTOR and _ZIP64_SIZE not in (csize, usize)
    if sizes_given and (csize, usize, crc) != (info.compress_size, info.file_size, info.CRC):
        raise Unreadable(f"{name}: its two zip headers disagree on its size or checksum")
    start = info.header_offset + _LOCAL_HEADER.size + nlen + xlen
    end = start + info.compress_size
    if end > total:
        raise Unreadable(f"{name}: its data runs past the end of the file (truncated)")
    return Layout(start, end)


def member_layouts(
    fh: IO[bytes], infos: Sequence[zipfile.ZipInfo], total: int
) -> dict[int, Layout]:
    """The layout of every member (by its index in ``infos``); members may not overlap."""
    layouts = {i: _layout(fh, info, total) for i, info in enumerate(infos)}
    previous_end, previous = -1, ""
    for i in sorted(layouts, key=lambda i: infos[i].header_offset):
        if infos[i].header_offset < previous_end:
            raise Unreadable(f"{infos[i].filename}: overlaps {previous} in the zip")
        previous_end, previous = layouts[i].end, infos[i].filename
    return layouts


def _inflate(fh: IO[bytes], info: zipfile.ZipInfo, layout: Layout) -> Iterator[bytes]:
    """The member's bytes, a chunk at a time. Never more than the size its header declares
    is decompressed: a member that would inflate beyond it, is damaged, is shorter than it
    or fails its CRC raises Unreadable."""
    name = info.filename
    fh.seek(layout.start)
    left_in, left_out, crc = info.compress_size, info.file_size, 0

    def read() -> bytes:
        nonlocal left_in
        chunk = fh.read(min(_CHUNK, left_in))
        if not chunk:
            raise Unreadable(f"{name}: its data ends early (truncated)")
        left_in -= len(chunk)
        return chunk

    def take(out: bytes) -> bytes:
        nonlocal left_out, crc
        if len(out) > left_out:
            raise Unreadable(
                f"{name}: inflates beyond the {info.file_size} bytes its zip header declares"
            )
        left_out -= len(out)
        crc = zlib.crc32(out, crc)
        return out

    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise Unreadable(f"{name}: stored, but its two sizes differ")
        while left_in:
            yield take(read())
    else:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        pending = b""
        while not inflater.eof:
            if not pending and left_in:
                pending = read()
            given = len(pending)
            try:  # at most one chunk, and at most one byte more than may remain
                out = inflater.decompress(pending, min(left_out + 1, _CHUNK))
            except zlib.error as exc:
                raise Unreadable(f"{name}: damaged compressed data ({exc})") from None
            pending = inflater.unconsumed_tail
            if out:
                yield take(out)
            elif not inflater.eof and len(pending) == given and not (given == 0 and left_in):
                raise Unreadable(f"{name}: its compressed data ends early")
        if pending or inflater.unused_data or left_in:
            raise Unreadable(f"{name}: data after the end of its compressed stream")
    if left_out:
        raise Unreadable(f"{name}: shorter than the {info.file_size} bytes its header declares")
    if crc != info.CRC:
        raise Unreadable(f"{name}: fails its CRC check (damaged)")


def read_member(fh: IO[bytes], info: zipfile.ZipInfo, layout: Layout) -> bytes:
    return b"".join(_inflate(fh, info, layout))


def hash_member(
    fh: IO[bytes], info: zipfile.ZipInfo, layout: Layout, prefix: int | None = None
) -> tuple[str, str | None]:
    """SHA-256 of the member and, with ``prefix``, of its first ``prefix`` bytes."""
    whole = hashlib.sha256()
    head = hashlib.sha256() if prefix is not None else None
    seen = 0
    for chunk in _inflate(fh, info, layout):
        whole.update(chunk)
        if head is not None and prefix is not None and seen < prefix:
            head.update(chunk[: prefix - seen])
        seen += len(chunk)
    return whole.hexdigest(), head.hexdigest() if head is not None else None
