"""Reading ``labels.csv``: each message's expected categories and the tags of its note.

A labels file has the header ``file,categories,notes``; categories are separated by ``;``
(none: ham). Tags come from the ``notes`` column (:func:`note_tags`): each ``;``-separated
field that is one tag word (a lower-case word or ``key=value``: ``obfuscated``,
``lang=fr``) or two or three with a ``key=value`` among them (``sent lang=fr``), and the
words after the last ``|`` when all are tag words (``... | thread=x sent obfuscated``). A
labels file where no note carries a tag (``freelance-dev``) is read by its own prose
convention (:func:`prose_tags`): a note opening with ``Obfuscation:`` is obfuscated, and a
language named in the note's opening clause (``Portuguese (BR), ...``, ``Hard negative
(German, ...)``, ``Roman Urdu/English mix: ...``) gives its ``lang=`` tag.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

from guard.errors import GuardError, Kind
from guard.policy import CATEGORIES


class LabelsError(GuardError, ValueError):
    """``labels.csv`` is malformed; the message names the file and the line."""

    kind = Kind.INPUT


LABELS = "labels.csv"  # the labels file of a corpus directory
OBFUSCATED = "obfuscated"
_TAG_WORD = re.compile(r"[a-z][a-z-]*(?:=[a-z0-9_-]+)?")
_LANGUAGE_NAMES = {
    "arabic": "ar",
    "chinese": "zh",
    "dutch": "nl",
    "english": "en",
    "french": "fr",
    "german": "de",
    "hindi": "hi",
    "hinglish": "hi",
    "indonesian": "id",
    "italian": "it",
    "japanese": "ja",
    "polish": "pl",
    "portuguese": "pt",
    "russian": "ru",
    "spanish": "es",
    "turkish": "tr",
    "ukrainian": "uk",
    "urdu": "ur",
    "vietnamese": "vi",
}
_LANGUAGE_WORD = re.compile(r"\b(" + "|".join(_LANGUAGE_NAMES) + r")\b", re.IGNORECASE)
_OPENING_CLAUSE = re.compile(r"[^:;.]{0,80}")


@dataclass(frozen=True, slots=True)
class LabelRow:
    """One line of ``labels.csv``: the file, its categories (empty: ham) and note tags."""

    file: str
    categories: frozenset[str]
    tags: frozenset[str] = frozenset()


def note_tags(notes: str) -> frozenset[str]:
    """The tags of one ``notes`` value (see the module docstring).

    A tag word is a lower-case word or ``key=value``. Tags are each ``;``-separated field
    that is one tag word, the words of a field of two or three tag words one of which is a
    ``key=value``, and the words after the last ``|`` when they all are tag words.
    ``"sent; obfuscated; she gives ..."`` (tags first), ``"... in words; lang=es;
    obfuscated"``, ``"...; sent lang=pl"`` (tags last) and ``"... filters. | thread=jt
    obfuscated"`` (tags after a bar) all give ``obfuscated``.
    """
    tags: set[str] = set()
    text = notes.strip()
    head, bar, tail = text.rpartition("|")
    if bar and _tag_words(tail, limit=None):
        tags.update(tail.split())
        text = head
    for part in text.split(";"):
        words = part.split()
        # one tag word, or a few with a key=value among them ("sent lang=pl"): never prose
        if _tag_words(part, limit=1) or (_tag_words(part, limit=3) and "=" in part):
            tags.update(words)
    return frozenset(tags)


def _tag_words(text: str, limit: int | None) -> bool:
    """True when ``text`` is 1..limit tag-shaped words (lower case, ``key=value``)."""
    words = text.split()
    if not words or (limit is not None and len(words) > limit):
        return False
    return all(_TAG_WORD.fullmatch(w) for w in words)


def prose_tags(notes: str) -> frozenset[str]:
    """Tags read from a note written without tags (``freelance-dev``'s convention)."""
    text = notes.strip()
    tags: set[str] = set()
    if text.lower().startswith("obfuscation:"):
        tags.add(OBFUSCATED)
    opening = _OPENING_CLAUSE.match(text)
    clause = opening.group() if opening else ""
    langs = {_LANGUAGE_NAMES[m.lower()] for m in _LANGUAGE_WORD.findall(clause)}
    non_english = sorted(langs - {"en"})
    if non_english:
        tags.add(f"lang={non_english[0]}")
    return frozenset(tags)


def is_non_english(tags: frozenset[str]) -> bool:
    """True when a ``lang=`` tag names anything but English (``mixed`` included)."""
    return any(t.startswith("lang=") and t != "lang=en" for t in tags)


def parse_labels(
    text: str, name: str = "labels.csv", categories: Sequence[str] = CATEGORIES
) -> list[tuple[str, frozenset[str]]]:
    """``(file, categories)`` rows of a labels file (header ``file,categories,notes``).

    Categories are separated by ``;``; empty means ham. Unknown categories, a missing
    header, empty or duplicate file names raise :class:`LabelsError`.
    """
    return [(r.file, r.categories) for r in parse_label_rows(text, name, categories)]


def parse_label_rows(
    text: str, name: str = "labels.csv", categories: Sequence[str] = CATEGORIES
) -> list[LabelRow]:
    """:func:`parse_labels` with the tags of each note (:func:`note_tags`).

    When no note of the file carries a tag, every note is read with :func:`prose_tags`.
    """
    lines = _label_lines(text, name, categories)
    read = note_tags if any(note_tags(notes) for _, _, notes in lines) else prose_tags
    return [LabelRow(file, cats, read(notes)) for file, cats, notes in lines]


def _label_lines(
    text: str, name: str, categories: Sequence[str]
) -> list[tuple[str, frozenset[str], str]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[:2]] != ["file", "categories"]:
        raise LabelsError(f"{name}: line 1: expected the header 'file,categories,notes'")
    known = set(categories)
    rows: list[tuple[str, frozenset[str], str]] = []
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        if not row or not "".join(row).strip():
            continue
        file = row[0].strip()
        if not file:
            raise LabelsError(f"{name}: line {line}: empty file name")
        if file in seen:
            raise LabelsError(f"{name}: line {line}: '{file}' is listed twice")
        seen.add(file)
        cats = frozenset(c.strip() for c in (row[1] if len(row) > 1 else "").split(";"))
        cats -= {""}
        unknown = sorted(cats - known)
        if unknown:
            raise LabelsError(f"{name}: line {line}: unknown category '{unknown[0]}'")
        rows.append((file, cats, ",".join(row[2:])))
    return rows
