"""Text normalisation that undoes the usual tricks for slipping words past a filter.

Applied once per field before any rule is matched:

* Unicode NFKC (fullwidth and mathematical letters become plain ones), lower case;
* zero-width, soft-hyphen, bidi-control, variation-selector and keycap characters removed;
* Cyrillic/Greek look-alike letters folded to Latin inside words that mix scripts
  ("Tеlеgrаm" with Cyrillic е/а) or that consist only of look-alikes;
* letters or digits split by spaces, dots, dashes or brackets joined ("s k y p e",
  "W.h.a.t.s.A.p.p", "[t][e][l][e]"), in any script ("т.е.л.е.г.р.а.м");
* numbers written as words turned into digits ("six one seven five five five ...");
* spelled-out e-mail addresses rebuilt ("john dot doe at gmail dot com", "john[at]x[dot]com");
* whitespace and quote markers (``>``) collapsed so a phrase can span wrapped lines.

``normalise`` is the fast path used on every message. ``normalise_tracked`` produces the
same string together with, for each output character, the index of the input character it
came from; it is only run when a rule fired, to show the user the original text, and then
only when the cheaper :func:`collapsed_offsets` cannot stand in for it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

import re2

# Characters that carry no visible content and are used to split words invisibly.
_INVISIBLE = [
    0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x20E3, 0xFEFF,
    *range(0x200B, 0x2010),  # zero-width space/joiners, LRM, RLM
    *range(0x202A, 0x202F),  # bidi embeddings and overrides
    *range(0x2060, 0x2070),  # word joiner, invisible operators, bidi isolates
    *range(0xFE00, 0xFE10),  # variation selectors (emoji presentation)
]  # fmt: skip

# Cyrillic and Greek letters that look like Latin ones (lower case, after NFKC + lower()).
_CONFUSABLE = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
    "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i",
    "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ɡ": "g", "ь": "b",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "γ": "y", "ϲ": "c", "ϳ": "j",
}  # fmt: skip

_PUNCT_FOLD = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
    "\u2015": "-", "\u2212": "-", "\u00a0": " ", "\u2007": " ", "\u202f": " ",
    "\u3000": " ", "\uff0e": ".", "\u3002": ".", "\uff20": "@",
}  # fmt: skip

_TRANSLATE: dict[int, str | None] = {c: None for c in _INVISIBLE}
_TRANSLATE.update({ord(k): v for k, v in _PUNCT_FOLD.items()})
_CONFUSABLE_TABLE = {ord(k): v for k, v in _CONFUSABLE.items()}
_CONFUSABLE_CHARS = frozenset(_CONFUSABLE)

_HAS_CYR_GREEK = re.compile(r"[\u0370-\u03ff\u0400-\u052f\u0261]")
_WORD = re.compile(r"[^\W_]+")
_LATIN = re.compile(r"[a-z]")
_CYR_GREEK = re.compile(r"[\u0370-\u03ff\u0400-\u052f\u0261]")

# E-mail quote markers ("> > text") once whitespace is collapsed to single spaces: a run of
# ">"/"|" at the start of the text or after a space, with the space after it. Written to
# start with the character class (the lookbehind checks the character before it), which
# lets the regex engine skip to the next ">" or "|" instead of trying every position.
_QUOTE_MARKS = re.compile(r"[>|](?<![^ ][>|])[>|]*(?: |$)")
_TOKEN = re.compile(r"\S+")

# Four or more single letters/digits separated by the same filler each time ("s k y p e",
# "W.h.a.t.s", "[t][e][l]", "(s)(k)(y)"); the same filler, so that a one-letter word before
# a spaced-out one ("в т.е.л.е.г.р.а.м") stays a word of its own.
_SPLIT_LETTERS = re.compile(
    r"(?<![^\W_])[^\W_](?P<f>[ .\-_*~|/\\()\[\]{}]{1,3})(?:[^\W_](?P=f)){2,}[^\W_](?![^\W_])"
)
_SPLIT_FILLER = re.compile(r"[\W_]+")

_NUMBER_WORDS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
    "cero": "0", "uno": "1", "dos": "2", "tres": "3", "cuatro": "4", "cinco": "5",
    "seis": "6", "siete": "7", "ocho": "8", "nueve": "9",
    "um": "1", "dois": "2", "três": "3", "quatro": "4", "sete": "7", "oito": "8", "nove": "9",
    "zéro": "0", "un": "1", "deux": "2", "trois": "3", "quatre": "4", "cinq": "5",
    "sept": "7", "huit": "8", "neuf": "9",
    "null": "0", "eins": "1", "zwei": "2", "drei": "3", "vier": "4", "fünf": "5",
    "sechs": "6", "sieben": "7", "acht": "8", "neun": "9",
    "ноль": "0", "один": "1", "два": "2", "три": "3", "четыре": "4", "пять": "5",
    "шесть": "6", "семь": "7", "восемь": "8", "девять": "9",
}  # fmt: skip
_NUMBER_WORD_RE = "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True))
# Seven or more number words in a row (a phone number), digits allowed in between.
_SPELLED_NUMBER = re.compile(
    rf"(?<![^\W_])(?:(?:{_NUMBER_WORD_RE}|\d)[\s,.\-]{{1,3}}){{6,}}(?:{_NUMBER_WORD_RE}|\d)(?![^\W_])"
)
_NUMBER_TOKEN = re.compile(rf"{_NUMBER_WORD_RE}|\d")

_AT_WORD = r"(?:[\[({<]\s*(?:at|arroba|@)\s*[\])}>]|\s(?:at|arroba)\s|\s?@\s?)"
_DOT_WORD = (
    r"(?:[\[({<]\s*(?:dot|punto|ponto|point|точка)\s*[\])}>]|\s(?:dot|punto|ponto|точка)\s|\.)"
)
_TLD = r"(?:com|net|org|io|info|biz|dev|app|ru|de|fr|br|uk|ca|au|nl|pl|mx|ar|example)"
_SPELLED_PART = re.compile(r"[\[({<]|\s(?:dot|punto|ponto|точка)\s")
# Mail providers whose name is often written with spaces inside ("g mail", "out look").
_PROVIDERS = ("gmail", "hotmail", "outlook", "yahoo", "protonmail", "proton", "icloud", "yandex")
_SPACED_PROVIDER = "|".join(r"\s?".join(name) for name in _PROVIDERS)
_SPELLED_EMAIL = re.compile(
    rf"(?<![^\W_.])[a-z0-9_\-]{{1,40}}(?:\s?{_DOT_WORD}\s?[a-z0-9_\-]{{1,40}}){{0,4}}"
    rf"\s?{_AT_WORD}\s?(?:{_SPACED_PROVIDER}|[a-z0-9\-]{{1,40}})"
    rf"(?:\s?{_DOT_WORD}\s?[a-z0-9\-]{{1,40}}){{0,3}}"
    rf"\s?{_DOT_WORD}\s?{_TLD}(?![^\W_])"
)
_EMAIL_AT = re.compile(rf"\s?{_AT_WORD}\s?")
_EMAIL_DOT = re.compile(rf"\s?{_DOT_WORD}\s?")


def _fold_word(word: str) -> str:
    """Fold a Cyrillic/Greek-containing word to Latin when it is a disguised Latin word."""
    if not _CYR_GREEK.search(word):
        return word
    if _LATIN.search(word) or (
        len(word) >= 3 and all(c in _CONFUSABLE_CHARS for c in word if not c.isdigit())
    ):
        return word.translate(_CONFUSABLE_TABLE)
    return word


# Marks text that was rebuilt from a disguised form (spelled or spaced-out numbers and
# addresses). A private-use character: it is not a letter or digit, so it never joins
# words, and rules can look for it ("re:\\x{e000}\\d{7,}" is a disguised phone number).
OBFUSCATION_MARK = "\ue000"
_DIGITS7 = re.compile(r"\d{7,}")


def _join_split(m: re.Match[str]) -> str:
    joined = _SPLIT_FILLER.sub("", m.group())
    return OBFUSCATION_MARK + joined if _DIGITS7.fullmatch(joined) else joined


def _spelled_number(m: re.Match[str]) -> str:
    digits = "".join(_NUMBER_WORDS.get(t, t) for t in _NUMBER_TOKEN.findall(m.group()))
    return OBFUSCATION_MARK + digits


def _spelled_email(m: re.Match[str]) -> str:
    text = m.group()
    if not _SPELLED_PART.search(text):
        return text  # an ordinary address, or "name at company.com": nothing disguised
    pieces = _EMAIL_AT.split(text, maxsplit=1)
    if len(pieces) != 2:
        return m.group()
    local, domain = pieces
    domain = "".join(_EMAIL_DOT.sub(".", domain.strip()).split())  # "g mail" -> "gmail"
    address = _EMAIL_DOT.sub(".", local.strip()) + "@" + domain
    return OBFUSCATION_MARK + address


def _fold_words(m: re.Match[str]) -> str:
    return _fold_word(m.group())


# Cheap over-approximating prechecks, run with RE2 (a DFA pass), so that the Python regex
# steps below only run on text that may need them.
_NUMBER_HINT = re2.compile(
    rf"(?:(?:{_NUMBER_WORD_RE}|\d)[\s,.\-]{{1,3}}){{6,}}(?:{_NUMBER_WORD_RE}|\d)"
)
_EMAIL_HINT = re2.compile(r"[\[({<]\s*(?:at|arroba|@)\s*[\])}>]|\s(?:dot|punto|ponto|точка)\s")
# RE2's \w is ASCII only: letters of every script are \pL (dotted Cyrillic "т.е.л.е.г").
_SPLIT_HINT = re2.compile(r"(?:[\pL\pN][ .\-_*~|/\\()\[\]{}]{1,3}){3}[\pL\pN]")
# On ASCII text, where RE2's ASCII-only classes agree with Python's, this matches whenever
# _SPLIT_LETTERS does (its lookarounds written as a consumed neighbour or an edge; only the
# "same filler" condition, a backreference, is left out). Most text passes _SPLIT_HINT
# (letters ending and starting words, "a b c d" inside longer runs) but not this, and
# _SPLIT_LETTERS is a slow scan.
_SPLIT_ASCII = re2.compile(
    r"(?:^|[^0-9A-Za-z])[0-9A-Za-z](?:[ .\-_*~|/\\()\[\]{}]{1,3}[0-9A-Za-z]){3,}(?:$|[^0-9A-Za-z])"
)

Precheck = Callable[[str], bool] | None


def _may_split(text: str) -> bool:
    """Whether _SPLIT_LETTERS may apply (its precheck is _SPLIT_HINT, exact on ASCII)."""
    if text.isascii():
        return _SPLIT_ASCII.search(text) is not None
    return _SPLIT_HINT.search(text) is not None


# The ordered regex steps shared by the fast and the tracked path; a step is skipped when
# its cheap precheck says it cannot apply.
_STEPS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str] | str, Precheck], ...] = (
    (_QUOTE_MARKS, "", lambda t: ">" in t or "|" in t),
    (_SPLIT_LETTERS, _join_split, _may_split),
    (_SPELLED_NUMBER, _spelled_number, lambda t: _NUMBER_HINT.search(t) is not None),
    (_SPELLED_EMAIL, _spelled_email, lambda t: _EMAIL_HINT.search(t) is not None),
)

# The RE2 prechecks of steps 1-3 in one automaton: one pass over the text answers all
# three (three separate searches cost 3-4 times as much). _needed_steps maps the set's
# answer back to the prechecks of _STEPS.
_HINT_PATTERNS = (_SPLIT_ASCII, _SPLIT_HINT, _NUMBER_HINT, _EMAIL_HINT)


def _hint_set() -> Any:
    options = re2.Options()
    options.max_mem = 64 << 20
    hints = re2.Set.SearchSet(options)
    for pattern in _HINT_PATTERNS:
        hints.Add(pattern.pattern)
    hints.Compile()
    return hints


_HINTS = _hint_set()


def _needed_steps(text: str) -> tuple[bool, bool, bool]:
    """The prechecks of _STEPS[1:] on ``text``, answered in one pass."""
    found = _HINTS.Match(text) or ()
    return ((0 in found) if text.isascii() else (1 in found)), 2 in found, 3 in found


def _char_fold(text: str) -> str:
    if text.isascii():
        return text.lower()  # nothing to fold: every key of the tables is non-ASCII
    return unicodedata.normalize("NFKC", text).lower().translate(_TRANSLATE)


def normalise(text: str) -> str:
    """Normalise ``text`` for matching (see the module docstring)."""
    return normalise_info(text)[0]


def normalise_info(text: str) -> tuple[str, bool]:
    """:func:`normalise`, and whether that only lower-cased ASCII text and collapsed its
    whitespace (nothing disguised was undone): then :func:`collapsed_offsets` can stand
    in for :func:`normalise_tracked`."""
    plain = text.isascii()
    text = _char_fold(text)
    if not plain and _HAS_CYR_GREEK.search(text):
        text = _WORD.sub(_fold_words, text)
    text = " ".join(text.split())
    if ">" in text or "|" in text:
        changed = _QUOTE_MARKS.sub("", text)
        if changed != text:
            text, plain = changed, False
    needed = _needed_steps(text)
    for index, (pattern, repl, _) in enumerate(_STEPS[1:]):
        if needed[index]:
            changed = pattern.sub(repl, text)
            if changed != text:
                text, plain = changed, False
                needed = _needed_steps(text)  # the later prechecks see the changed text
    return text, plain


def _sub_tracked(
    pattern: re.Pattern[str],
    repl: Callable[[re.Match[str]], str] | str,
    text: str,
    offsets: list[int],
) -> tuple[str, list[int]]:
    parts: list[str] = []
    new_offsets: list[int] = []
    last = 0
    for m in pattern.finditer(text):
        start, end = m.span()
        replacement = repl if isinstance(repl, str) else repl(m)
        parts.append(text[last:start])
        new_offsets.extend(offsets[last:start])
        parts.append(replacement)
        span = max(end - start, 1)
        for i in range(len(replacement)):
            new_offsets.append(offsets[min(start + i * span // max(len(replacement), 1), end - 1)])
        last = end
    parts.append(text[last:])
    new_offsets.extend(offsets[last:])
    return "".join(parts), new_offsets


def _collapse_tracked(text: str, offsets: list[int]) -> tuple[str, list[int]]:
    """``" ".join(text.split())`` with offsets: every whitespace run becomes one space."""
    parts: list[str] = []
    new_offsets: list[int] = []
    for m in _TOKEN.finditer(text):
        if parts:
            parts.append(" ")
            new_offsets.append(offsets[m.start() - 1])
        parts.append(m.group())
        new_offsets.extend(offsets[m.start() : m.end()])
    return "".join(parts), new_offsets


def normalise_tracked(text: str) -> tuple[str, list[int]]:
    """Like :func:`normalise`, plus the source index of every output character."""
    out: list[str] = []
    offsets: list[int] = []
    i, n = 0, len(text)
    if text.isascii():  # lower() maps every ASCII character to exactly one character
        out.append(text.lower())
        offsets = list(range(n))
        i = n
    while i < n:
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        folded = _char_fold(text[i:j])
        out.append(folded)
        offsets.extend([i] * len(folded))
        i = j
    norm = "".join(out)
    if _HAS_CYR_GREEK.search(norm):
        norm, offsets = _sub_tracked(_WORD, _fold_words, norm, offsets)
    norm, offsets = _collapse_tracked(norm, offsets)
    for pattern, repl, precheck in _STEPS:
        if precheck is None or precheck(norm):
            norm, offsets = _sub_tracked(pattern, repl, norm, offsets)
    return norm, offsets


# ASCII whitespace (what str.split() splits on) as spaces, for collapsed_offsets.
_ASCII_SPACES = bytes.maketrans(b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f", b" " * 9)
_SPACE_RUN = re.compile(rb" +")


def collapsed_offsets(text: str, positions: tuple[int, int]) -> tuple[int, int]:
    """For ASCII ``text`` whose normalised form is just ``" ".join(text.lower().split())``
    (:func:`normalise_info` says when), the offsets :func:`normalise_tracked` gives two
    ``positions`` of that form, without tracking every character.

    A character of the collapsed text sits as far into ``text`` as the whitespace
    dropped before it: each run of whitespace became one space (which stands for the
    run's last character) and a run at the start went. Only runs of two or more shift
    anything; they are found with byte searches, up to the later position.
    """
    if positions[0] > positions[1]:
        second, first = collapsed_offsets(text, (positions[1], positions[0]))
        return first, second
    data = text.encode("ascii").translate(_ASCII_SPACES)
    shift = len(data) - len(data.lstrip(b" "))
    out = []
    run = data.find(b"  ", shift)
    for pos in positions:
        while run >= 0 and run - shift <= pos:  # the run's space is at or before pos
            spaces = _SPACE_RUN.match(data, run)
            end = spaces.end() if spaces else run + 2
            shift += end - run - 1
            run = data.find(b"  ", end)
        out.append(pos + shift)
    return out[0], out[1]
