"""Checking an evidence bundle: every file against MANIFEST.json and MANIFEST.json.sha256,
every message against the hash inbox-guard recorded when it first saw it, and, with
``expect``, MANIFEST.json against a SHA-256 kept elsewhere.

Independent of the rest of the guard (no store, no configuration, no server): it reads a
zip written by :mod:`guard.reports.export`, in place, through :mod:`guard.reports.zipcheck`.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from guard.errors import GuardError, Kind
from guard.reports.bundle import FORMAT, MANIFEST, MANIFEST_SUMS, sha256_hex
from guard.reports.zipcheck import (
    Layout,
    Unreadable,
    check_entries,
    entry_kind,
    hash_member,
    member_layouts,
    read_member,
    safe_name,
)

__all__ = ["BundleError", "VerifyReport", "verify_bundle"]

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BundleError(GuardError):
    """The file is not a readable bundle at all (missing, not a zip, truncated, corrupt)."""

    kind = Kind.INPUT


@dataclass
class VerifyReport:
    """What :func:`verify_bundle` found. ``problems`` are one line each, the first one
    naming the first altered, missing or extra file (or the --expect mismatch); names in
    them come from the zip and must be made safe before they are shown on a terminal."""

    messages: int = 0  # message files matching both the manifest and the recorded hash
    files: int = 0  # all files that checked out, the two manifest files included
    missing: int = 0  # messages the manifest itself lists as not included
    partial: int = 0
    prefix_only: int = 0  # messages whose recorded hash covers only their first bytes
    manifest_sha256: str | None = None  # of MANIFEST.json as the bundle holds it
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Expected:
    name: str
    sha256: str
    size: int | None
    what: str  # "" or, for a message, which one it is
    recorded: str | None = None  # a message's recorded_sha256
    recorded_bytes: int | None = None  # ... when it covers only the first bytes


def _message_label(entry: dict[str, Any], total: int) -> str:
    parts = [f"message {entry.get('number', '?')} of {total}"]
    date = entry.get("date_utc") or (entry.get("imap") or {}).get("internal_date")
    if isinstance(date, str):
        parts.append(date)
    if isinstance(entry.get("from"), str) and entry["from"]:
        parts.append(f"from {entry['from']}")
    if isinstance(entry.get("message_id"), str) and entry["message_id"]:
        parts.append(f"Message-ID {entry['message_id']}")
    return ", ".join(parts)


def _size_of(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _expected_from_manifest(
    manifest: dict[str, Any], report: VerifyReport, allow_missing: bool
) -> list[_Expected] | None:
    messages = manifest.get("messages")
    files = manifest.get("files")
    if not isinstance(messages, list) or not isinstance(files, list):
        report.problems.append(f"{MANIFEST}: has no list of messages and files")
        return None
    out: list[_Expected] = []
    total = len(messages)
    statuses: dict[str, int] = {"included": 0, "partial": 0, "missing": 0}
    for entry in messages:
        if not isinstance(entry, dict):
            report.problems.append(f"{MANIFEST}: a message entry is not an object")
            continue
        label = _message_label(entry, total)
        status = entry.get("status")
        if status not in statuses:
            report.problems.append(f"{MANIFEST}: {label} has an unknown status")
            continue
        statuses[status] += 1
        recorded = entry.get("recorded_sha256")
        if not isinstance(recorded, str) or not _HEX64.fullmatch(recorded):
            report.problems.append(
                f"{MANIFEST}: {label} has no valid recorded_sha256 (the hash inbox-guard "
                "recorded when it first saw the message)"
            )
            recorded = None
        if status == "missing":
            report.missing += 1
            if not allow_missing:
                report.problems.append(
                    f"{MANIFEST}: {label} is listed as missing, so the bundle does not hold "
                    "it (--allow-missing accepts that)"
                )
            continue
        if status == "partial":
            report.partial += 1
        name, sha, size = entry.get("file"), entry.get("sha256"), _size_of(entry.get("size"))
        if not isinstance(name, str) or not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            report.problems.append(f"{MANIFEST}: {label} has no valid file name and SHA-256")
            continue
        if size is None:
            report.problems.append(f"{MANIFEST}: {label} has no valid size")
            continue
        prefix = entry.get("recorded_bytes")
        if prefix is not None and (_size_of(prefix) is None or not 0 < prefix < size):
            report.problems.append(f"{MANIFEST}: {label} has an invalid recorded_bytes")
            continue
        out.append(_Expected(name, sha, size, label, recorded, prefix))
    counts = manifest.get("counts")
    wanted_counts = {"messages": total, **statuses}
    if not isinstance(counts, dict) or any(counts.get(k) != v for k, v in wanted_counts.items()):
        report.problems.append(f"{MANIFEST}: its counts do not match its list of messages")
    for entry in files:
        name = entry.get("file") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            report.problems.append(f"{MANIFEST}: a file entry has no valid name and SHA-256")
            continue
        size = _size_of(entry.get("size"))
        if size is None:
            report.problems.append(f"{MANIFEST}: {name} has no valid size")
            continue
        out.append(_Expected(name, sha, size, ""))
    return out


def _parse_sums(data: bytes, report: VerifyReport) -> dict[str, str] | None:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        report.problems.append(f"{MANIFEST_SUMS}: not a list of SHA-256 sums (not ASCII text)")
        return None
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if m is None:
            report.problems.append(f"{MANIFEST_SUMS}: line {number} is not '<sha256>  <file>'")
            continue
        if m.group(2) in sums:
            report.problems.append(f"{MANIFEST_SUMS}: {m.group(2)} is listed twice")
        sums[m.group(2)] = m.group(1)
    return sums


def _normal_hash(value: str) -> str | None:
    text = value.strip().lower()
    return text if _HEX64.fullmatch(text) else None


def verify_bundle(
    path: Path, *, expect: str | None = None, allow_missing: bool = False
) -> VerifyReport:
    """Check a bundle, reading the zip in place (nothing is extracted, so names such as
    ``../x`` are only reported): every file against MANIFEST.json and
    MANIFEST.json.sha256, every message also against the hash inbox-guard recorded when
    it first saw it; with ``expect``, MANIFEST.json against that SHA-256 (noted at export
    time, kept elsewhere). A message the manifest lists as missing is a problem unless
    ``allow_missing``. Raises BundleError when the file is not a readable zip (missing,
    not a zip, truncated, or a member that is encrypted, uses another compression, is
    damaged or inflates beyond its declared size); nothing is decompressed beyond the
    sizes the zip declares, and those are checked against the manifest first."""
    wanted = None
    if expect is not None:
        wanted = _normal_hash(expect)
        if wanted is None:
            raise ValueError("the expected hash must be 64 hexadecimal digits (a SHA-256)")
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise BundleError(f"cannot read '{path}': no such file") from None
    except IsADirectoryError:
        raise BundleError(f"cannot read '{path}': it is a directory") from None
    except OSError as exc:
        raise BundleError(f"cannot read '{path}': {exc.strerror or exc}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        raise BundleError(
            f"'{path}' is not a readable zip file (truncated or corrupt): {exc}"
        ) from None
    with zf:
        try:
            with path.open("rb") as fh:
                report = _verify(zf, fh, os.fstat(fh.fileno()).st_size, allow_missing)
        except Unreadable as exc:
            raise BundleError(f"'{path}' is corrupt or unsafe: cannot read {exc}") from None
        except OSError as exc:
            raise BundleError(f"cannot read '{path}': {exc.strerror or exc}") from None
    if wanted is not None and report.manifest_sha256 != wanted:
        got = report.manifest_sha256
        report.problems.insert(
            0,
            f"{MANIFEST}: its SHA-256 is {got}, not the expected {wanted}: this is not the "
            "bundle whose hash was noted"
            if got is not None
            else f"{MANIFEST}: missing, so it cannot be compared with the expected {wanted}",
        )
    return report


def _load_manifest(data: bytes, report: VerifyReport) -> dict[str, Any] | None:
    try:
        loaded = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        report.problems.append(f"{MANIFEST}: damaged (not valid JSON)")
        return None
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
        report.problems.append(f"{MANIFEST}: not an inbox-guard evidence manifest ({FORMAT})")
        return None
    return loaded


def _verify(zf: zipfile.ZipFile, fh: IO[bytes], total: int, allow_missing: bool) -> VerifyReport:
    report = VerifyReport()
    infos = zf.infolist()
    layouts = member_layouts(fh, infos, total)  # nothing unreadable, before anything is read
    flagged = check_entries(infos, report.problems)
    entries: dict[str, tuple[zipfile.ZipInfo, Layout]] = {}
    for i, info in enumerate(infos):
        entries.setdefault(info.filename, (info, layouts[i]))

    def small(name: str) -> bytes | None:
        if name in flagged:
            return None  # already reported (a link, a duplicate ...): not read
        if name not in entries:
            report.problems.append(f"{name}: missing from the bundle")
            return None
        info, layout = entries[name]
        if info.file_size > MAX_MANIFEST_BYTES:
            report.problems.append(f"{name}: too large to be a manifest")
            return None
        return read_member(fh, info, layout)

    manifest_data = small(MANIFEST)
    if manifest_data is not None:
        report.manifest_sha256 = sha256_hex(manifest_data)
    data = small(MANIFEST_SUMS)
    sums: dict[str, str] | None = None
    sums_ok = False
    if data is not None:
        before = len(report.problems)
        sums = _parse_sums(data, report)
        sums_ok = len(report.problems) == before
    if manifest_data is not None and sums is not None:
        recorded = sums.get(MANIFEST)
        if recorded is None:
            report.problems.append(f"{MANIFEST_SUMS}: has no line for {MANIFEST}")
        elif recorded != report.manifest_sha256:
            report.problems.insert(
                0,
                f"{MANIFEST}: altered (its SHA-256 is not the one in {MANIFEST_SUMS}; "
                "one of the two was changed)",
            )
        else:
            report.files += 1
    manifest = _load_manifest(manifest_data, report) if manifest_data is not None else None

    expected = (
        _expected_from_manifest(manifest, report, allow_missing) if manifest is not None else None
    )
    if expected is None and sums is not None:  # no usable manifest: check what the sums say
        expected = [_Expected(n, h, None, "") for n, h in sums.items() if n != MANIFEST]
    expected = expected or []

    listed: set[str] = set()
    for exp in expected:
        what = f" ({exp.what})" if exp.what else ""
        if exp.name in listed:
            report.problems.append(f"{MANIFEST}: {exp.name} is listed twice")
            continue
        listed.add(exp.name)
        if exp.name in flagged:
            continue  # reported with the entry itself
        if not safe_name(exp.name):
            report.problems.append(f"{exp.name}: unsafe file name in {MANIFEST}{what}")
            continue
        found = entries.get(exp.name)
        if found is None:
            report.problems.append(f"{exp.name}: missing from the bundle{what}")
            continue
        info, layout = found
        if entry_kind(info) != "file":
            report.problems.append(f"{exp.name}: not a plain file in the zip{what}")
            continue
        if exp.size is not None and info.file_size != exp.size:  # checked before inflating
            report.problems.append(
                f"{exp.name}: altered (its size in the zip, {info.file_size} bytes, is not "
                f"the {exp.size} bytes in {MANIFEST}){what}"
            )
            continue
        sha, head = hash_member(fh, info, layout, exp.recorded_bytes)
        if sha != exp.sha256:
            report.problems.append(f"{exp.name}: altered (SHA-256 differs from {MANIFEST}){what}")
            continue
        if exp.what and exp.recorded is not None and (head or sha) != exp.recorded:
            report.problems.append(
                f"{exp.name}: not the message inbox-guard recorded when it first saw it "
                f"(its SHA-256 is not the recorded_sha256 in {MANIFEST}){what}"
            )
            continue
        report.files += 1
        if exp.what and exp.recorded is not None:
            report.messages += 1
            report.prefix_only += exp.recorded_bytes is not None

    for name, (info, _) in entries.items():
        if name in listed or name in flagged or name in (MANIFEST, MANIFEST_SUMS):
            continue
        if entry_kind(info) == "dir":
            continue  # a folder entry (the bundle unpacked and zipped again): no content
        report.problems.append(f"{name}: extra file, not listed in {MANIFEST}")

    if manifest is not None and sums is not None:
        from_manifest = {e.name: e.sha256 for e in expected}
        from_sums = {n: h for n, h in sums.items() if n != MANIFEST}
        consistent = sums_ok and sums.get(MANIFEST) == report.manifest_sha256
        for name in sorted(set(from_manifest) | set(from_sums)):
            if from_manifest.get(name) != from_sums.get(name):
                consistent = False
                report.problems.append(
                    f"{MANIFEST_SUMS}: the line for {name} does not match {MANIFEST}"
                )
        if consistent:
            report.files += 1  # every line of it checked out
    return report
